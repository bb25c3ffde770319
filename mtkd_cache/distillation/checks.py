"""Checks of numeric options shared by the configs: a value that is NaN or infinite passes every `<`/`>`
comparison that a range check makes (`nan <= 0` is False), so finiteness is checked first, by name."""

from __future__ import annotations

import math

from mtkd_cache.errors import ConfigError


def require_finite(flag: str, value: float) -> None:
    """Refuse NaN and ±inf for `flag` (a range check alone would let NaN through)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, not {value}.")


def require_in_range(flag: str, value: float, low: float, high: float | None = None, *, low_open: bool = False) -> None:
    """Refuse a non-finite `value` or one outside [low, high] ((low, high] when `low_open`)."""
    require_finite(flag, value)
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise ConfigError(f"{flag} must be {bound}{'' if high is None else f' and at most {high:g}'}, not {value}.")
