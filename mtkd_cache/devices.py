"""Device and dtype choice, shared by the teacher runner and the trainer.

`auto` means CUDA when present, CPU otherwise. Asking for CUDA on a machine without it is an error,
never a silent CPU fallback (RELIABILITY.md, fault 14).
"""

from __future__ import annotations

import torch

from mtkd_cache.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {requested} was asked for but CUDA is not available to torch "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu or auto."
            )
        return torch.device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), not '{requested}'.")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA cards that support it, float16 on older cards, float32 on CPU."""
    if requested == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, not '{requested}'.")
    dtype = getattr(torch, requested)
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError("--dtype float16 is not supported on CPU; use float32 or bfloat16 there.")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
