"""Device and dtype choice, shared by the teacher runner and the trainer.

`auto` means CUDA when present, CPU otherwise. Asking for CUDA on a machine without it is an error,
never a silent CPU fallback (RELIABILITY.md, fault 14). A config checks the spelling of its device when
it is made (`check_device`) and finds out whether the device exists when it runs (`resolve_device`), so
a typo fails before any work and a missing GPU fails on the machine that lacks it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mtkd_cache.choices import Choice
from mtkd_cache.errors import ConfigError

if TYPE_CHECKING:  # torch loads when a device is resolved: a config and `mtkd-cache info` do not pay for it
    import torch

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N: a device is an open set, so it stays a checked string
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DType(Choice):
    """The compute precision of a torch model; `auto` is decided per device by `resolve_dtype`."""

    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"




def set_threads(threads: int | None, flag: str = "--threads") -> None:
    """torch's intra-op threads for this process (None: torch's default, one per core). On a machine shared
    with other jobs fewer threads are often faster: a student epoch on a loaded 2-core machine took 196 s
    with the default and 62 s with one thread, same loss. The one place a thread count is applied."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{flag} must be a whole number of at least 1, not {threads!r}.")
    import torch

    torch.set_num_threads(threads)


def check_device(requested: str, flag: str = "--device") -> str:
    """`requested` when it is auto, cpu, cuda or cuda:N; whether that device exists is `resolve_device`'s question."""
    if not isinstance(requested, str) or not _DEVICE_PATTERN.match(requested):
        raise ConfigError(f"{flag} must be one of {', '.join(DEVICES)} (or cuda:N), not '{requested}'.")
    return requested


def resolve_device(requested: str) -> torch.device:
    import torch

    check_device(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {requested} was asked for but CUDA is not available to torch "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu or auto."
            )
        return torch.device(requested)
    return torch.device("cpu")


def resolve_dtype(requested: str | DType, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA cards that support it, float16 on older cards, float32 on CPU."""
    import torch

    requested = DType.parse(requested, "--dtype")
    if requested is DType.AUTO:
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = getattr(torch, requested.value)
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError("--dtype float16 is not supported on CPU; use float32 or bfloat16 there.")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
