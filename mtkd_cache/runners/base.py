"""The runner seam: what every teacher backend provides, how one is chosen, and how rows run through it.

A `TeacherRunner` turns padded token batches into logits in the model's own label order. The torch
backend (`torch_runner.TorchTeacher`) and the onnx backend (`onnx_runner.OnnxTeacher`) implement it;
`build` talks to this module only, so a new backend is a new class here plus a case in `make_runner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mtkd_cache._faults import fault_point
from mtkd_cache.choices import Choice
from mtkd_cache.data.batching import TokenizedRows, batched_forward
from mtkd_cache.devices import DType, check_device, resolve_device, resolve_dtype
from mtkd_cache.errors import ConfigError
from mtkd_cache.progress import ProgressEvents
from mtkd_cache.runners.prompts import PromptConfig
from mtkd_cache.runners.teachers import ResolvedTeacher, TeacherSpec, local_files, resolve_teacher

if TYPE_CHECKING:  # torch loads with a runner: RunnerConfig and `mtkd-cache --help` do not pay for it
    import torch


class Backend(Choice):
    """How teachers run: `torch` loads checkpoint directories, `onnx` runs .onnx files with onnxruntime,
    `causal-lm` scores a language model's verbalizer log-probabilities, `openai` asks an OpenAI-compatible
    endpoint for them."""

    TORCH = "torch"
    ONNX = "onnx"
    CAUSAL_LM = "causal-lm"
    OPENAI = "openai"


@dataclass(frozen=True)
class RunnerConfig:
    """How teachers run. Plain strings are accepted for the enum fields and coerced; a bad value is refused
    here, naming its flag, before any teacher is loaded."""

    backend: Backend = field(default=Backend.TORCH, metadata={"help": (
        "Teacher runtime: torch (checkpoint directories), onnx (.onnx files from `export`, run by onnxruntime "
        "in the precision they were exported in), causal-lm (a language model scored on --verbalizers; a torch "
        "build detects one from its config) or openai (NAME=MODEL@BASE_URL of an OpenAI-compatible server).")})
    device: str = field(default="auto", metadata={"help": (
        "auto (CUDA when present), cpu or cuda[:N]. CUDA asked for but missing is an error.")})
    dtype: DType = field(default=DType.AUTO, metadata={"help": (
        "auto (bf16/fp16 on CUDA, fp32 on CPU), float32, float16 or bfloat16.")})
    max_length: int = field(default=128, metadata={"help": (
        "Tokens per text (pair) before truncation; truncations are counted.")})
    batch_tokens: int | None = field(default=None, metadata={"help": (
        "Padded tokens per batch; default 4096 on CPU (2048 with --backend onnx), 32768 on CUDA.")})
    tensorrt: bool = field(default=False, metadata={"help": (
        "--backend onnx on CUDA: TensorRT's provider first (needs TensorRT; slow first build, engines cached).")})

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend.parse(self.backend, "--backend"))
        object.__setattr__(self, "dtype", DType.parse(self.dtype, "--dtype"))
        check_device(self.device)
        if self.tensorrt and self.backend is not Backend.ONNX:
            raise ConfigError("--tensorrt applies to --backend onnx only.")
        if self.max_length < 2:
            raise ConfigError(f"--max-length must be at least 2, not {self.max_length}.")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ConfigError(f"--batch-tokens must be positive, not {self.batch_tokens}.")


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

    # Optional, found with getattr: `prepare(split, texts, pairs, max_length)` where a runner renders its own
    # inputs (a prompt around each text), and `score_rows(prepared, start, end, events)` where it batches
    # and schedules rows itself (an endpoint's concurrent requests) instead of through `logits`.


def resolve_runtime(runner: RunnerConfig) -> tuple[torch.device, torch.dtype | None]:
    """The teachers' device, and the torch dtype (None for onnx: an ONNX file runs in the precision it holds;
    None for openai: the server decides)."""
    if runner.backend is Backend.OPENAI:
        import torch

        return torch.device("cpu"), None
    if runner.backend in (Backend.TORCH, Backend.CAUSAL_LM):
        device = resolve_device(runner.device)
        return device, resolve_dtype(runner.dtype, device)
    from mtkd_cache.runners.onnx_runner import resolve_onnx_device

    device = resolve_onnx_device(runner.device)
    if runner.tensorrt and device.type != "cuda":
        raise ConfigError("--tensorrt needs a CUDA device (--device cuda or auto on a GPU machine with onnxruntime-gpu).")
    return device, None


def default_batch_tokens(backend: Backend, device: torch.device) -> int:
    if device.type == "cuda":
        return 32768
    # onnxruntime's CPU kernels ran 8-15% faster on 2,048-token batches than on 4,096 (benchmarks/bench_onnx.py).
    return 2048 if backend is Backend.ONNX else 4096


def make_runner(teacher: ResolvedTeacher, runner: RunnerConfig, device: torch.device, dtype: torch.dtype | None,
                batch_tokens: int) -> TeacherRunner:
    backend = Backend.parse(teacher.backend, "--backend") if teacher.backend else runner.backend
    if backend is Backend.CAUSAL_LM:
        from mtkd_cache.runners.causal_lm import CausalLMTeacher

        return CausalLMTeacher(teacher, device, dtype, runner.max_length, batch_tokens)
    if backend is Backend.OPENAI:
        from mtkd_cache.runners.openai_runner import EndpointTeacher

        return EndpointTeacher(teacher)
    if backend is Backend.TORCH:
        from mtkd_cache.runners.torch_runner import TorchTeacher

        return TorchTeacher(teacher, device, dtype, runner.max_length)
    from mtkd_cache.runners.onnx_runner import OnnxOptions, OnnxTeacher

    options = OnnxOptions(tensorrt=runner.tensorrt, max_rows=min(batch_tokens, 1024), max_length=runner.max_length)
    return OnnxTeacher(teacher.spec.name, teacher.model_file, device, options)


def resolve_for_backend(spec: TeacherSpec, task, runner: RunnerConfig, prompt: PromptConfig,
                        endpoint_options=None) -> ResolvedTeacher:
    """A teacher's files and identity under the build's backend; a --backend torch teacher whose checkpoint is
    a causal LM (its config's architectures) is scored as one, which needs --prompt."""
    if runner.backend is Backend.OPENAI:
        from mtkd_cache.runners.openai_runner import resolve_endpoint

        return resolve_endpoint(spec, task, prompt, endpoint_options)
    if runner.backend is Backend.CAUSAL_LM:
        from mtkd_cache.runners.causal_lm import resolve_causal_lm

        return resolve_causal_lm(spec, task, prompt)
    if runner.backend is Backend.TORCH and not spec.source.endswith(".onnx"):
        from mtkd_cache.runners.causal_lm import is_causal_lm_checkpoint, resolve_causal_lm

        directory, revision = local_files(spec)
        if is_causal_lm_checkpoint(directory):
            if not prompt.used:
                raise ConfigError(f"teacher '{spec.name}' is a causal language model; give --prompt FILE (and "
                                  "--verbalizers) to score it as one, or build it with --backend causal-lm.")
            return resolve_causal_lm(spec, task, prompt, directory, revision)
    if prompt.used:
        raise ConfigError(f"teacher '{spec.name}' is not a causal language model, and --prompt, --verbalizers, "
                          "--shots, --scoring and --calibrate apply to causal-LM and openai teachers only; build "
                          "it with another `build` command into the same --out.")
    return resolve_teacher(spec, task.label_names)


def run_rows(runner: TeacherRunner, tokens: TokenizedRows, start: int, end: int, batch_tokens: int,
             events: ProgressEvents) -> np.ndarray:
    """float32 logits [end - start, model labels], in row order (batches run longest first)."""
    score_rows = getattr(runner, "score_rows", None)
    if score_rows is not None:
        return score_rows(tokens, start, end, events)

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        fault_point("teacher_batch")
        return runner.logits(batch)

    return batched_forward(forward, tokens, np.arange(start, end), batch_tokens, runner.pad_id, runner.pad_left,
                           on_batch=events.advance)
