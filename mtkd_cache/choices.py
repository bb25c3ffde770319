"""Closed sets of option values (backend, dtype, strategy, metric, …): one base class for all of them.

A member's value is the word the CLI takes, the manifest and the reports write and a Python caller may pass
instead of the member, so configs accept either and keep the member; a word outside the set is refused in
one sentence that names the flag and every choice.
"""

from __future__ import annotations

from enum import Enum

from mtkd_cache.errors import ConfigError


class Choice(str, Enum):
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value: object, flag: str):
        """`value` (a member or its word) as a member; a ConfigError naming `flag` and the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"{flag} must be one of {', '.join(m.value for m in cls)}, not '{value}'.") from None

    @classmethod
    def words(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)
