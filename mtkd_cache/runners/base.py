"""The runner seam: what every teacher backend provides, how one is chosen, and how rows run through it.

A `TeacherRunner` turns padded token batches into logits in the model's own label order. The torch
backend (`torch_runner.TorchTeacher`) and the onnx backend (`onnx_runner.OnnxTeacher`) implement it;
`build` talks to this module only, so a new backend is a new class here plus a case in `make_runner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from mtkd_cache._faults import fault_point
from mtkd_cache.data.batching import TokenizedRows, batched_forward
from mtkd_cache.devices import DTYPES, resolve_device, resolve_dtype
from mtkd_cache.errors import ConfigError
from mtkd_cache.progress import ProgressEvents
from mtkd_cache.runners.teachers import ResolvedTeacher

BACKENDS = ("torch", "onnx")


@dataclass(frozen=True)
class RunnerConfig:
    """How teachers run. `batch_tokens` None picks 4,096 padded tokens per batch on CPU (2,048 for onnx),
    32,768 on CUDA.

    backend `torch` loads checkpoint directories; `onnx` runs .onnx files with onnxruntime, in the precision
    they were exported in, on the CUDA provider (TensorRT's first when `tensorrt`) or the CPU one."""

    backend: str = "torch"
    device: str = "auto"
    dtype: str = "auto"
    max_length: int = 128
    batch_tokens: int | None = None
    tensorrt: bool = False


class TeacherRunner(Protocol):
    """A loaded teacher on one device."""

    name: str
    tokenizer: object  # a transformers tokenizer: build tokenizes with it once per tokenizer group
    pad_id: int
    pad_left: bool
    attn_implementation: str  # recorded in the manifest
    providers: list[str]  # onnxruntime's execution providers; empty for torch

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """float32 logits [rows, model labels] for one padded batch (`pad_rows`)."""
        ...


def resolve_runtime(backend: str, requested_device: str, requested_dtype: str,
                    tensorrt: bool = False) -> tuple[torch.device, torch.dtype | None]:
    """The teachers' device, and the torch dtype (None for onnx: an ONNX file runs in the precision it holds)."""
    if backend == "torch":
        device = resolve_device(requested_device)
        return device, resolve_dtype(requested_dtype, device)
    from mtkd_cache.runners.onnx_runner import resolve_onnx_device

    device = resolve_onnx_device(requested_device)
    if requested_dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, not '{requested_dtype}'.")
    if tensorrt and device.type != "cuda":
        raise ConfigError("--tensorrt needs a CUDA device (--device cuda or auto on a GPU machine with onnxruntime-gpu).")
    return device, None


def default_batch_tokens(backend: str, device: torch.device) -> int:
    if device.type == "cuda":
        return 32768
    # onnxruntime's CPU kernels ran 8-15% faster on 2,048-token batches than on 4,096 (benchmarks/bench_onnx.py).
    return 2048 if backend == "onnx" else 4096


def make_runner(teacher: ResolvedTeacher, runner: RunnerConfig, device: torch.device, dtype: torch.dtype | None,
                batch_tokens: int) -> TeacherRunner:
    if runner.backend == "torch":
        from mtkd_cache.runners.torch_runner import TorchTeacher

        return TorchTeacher(teacher, device, dtype)
    from mtkd_cache.runners.onnx_runner import OnnxOptions, OnnxTeacher

    options = OnnxOptions(tensorrt=runner.tensorrt, max_rows=min(batch_tokens, 1024), max_length=runner.max_length)
    return OnnxTeacher(teacher.spec.name, teacher.model_file, device, options)


def run_rows(runner: TeacherRunner, tokens: TokenizedRows, start: int, end: int, batch_tokens: int,
             events: ProgressEvents) -> np.ndarray:
    """float32 logits [end - start, model labels], in row order (batches run longest first)."""

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        fault_point("teacher_batch")
        return runner.logits(batch)

    return batched_forward(forward, tokens, np.arange(start, end), batch_tokens, runner.pad_id, runner.pad_left,
                           on_batch=events.advance)
