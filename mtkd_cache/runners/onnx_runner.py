"""ONNX models run by onnxruntime: the `onnx` build backend's teacher runner, also used by `predict`.

onnxruntime quietly runs on the CPU provider when the CUDA one cannot start (the CPU wheel installed, a
missing or mismatched cuDNN). RELIABILITY.md asks for the opposite, so the providers a session actually
got are compared with the ones asked for, and recorded in the manifest.

An ONNX file is read with what sits beside it: the tokenizer files (`export` saves them there) and, for
files exported by other tools (e.g. optimum), a config.json whose id2label names the outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtkd_cache.choices import Choice
from mtkd_cache.errors import ConfigError, TeacherError
from mtkd_cache.runners.model_files import TOKENIZER_FILES, import_optional

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_CUDA = "CUDAExecutionProvider"
_TENSORRT = "TensorrtExecutionProvider"
_CPU = "CPUExecutionProvider"


class GraphOptimization(Choice):
    """onnxruntime's graph optimization level; the value is ours, `level` onnxruntime's name for it."""

    DISABLE = "disable"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


    @property
    def level(self) -> str:
        return {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}[self.value]


@dataclass(frozen=True)
class OnnxOptions:
    """How an onnxruntime session runs. `threads` None follows torch.get_num_threads(), so both backends
    honour the same OMP_NUM_THREADS / torch.set_num_threads and compare fairly."""

    threads: int | None = None
    optimization: GraphOptimization = GraphOptimization.ALL
    # Idle intra-op threads busy-wait by default in onnxruntime. Off: a build's own tokenizing, padding and
    # shard-writing threads (and anything else on the machine) get the cores; 1.26x rows/s measured under load.
    spinning: bool = False
    tensorrt: bool = False  # on CUDA: TensorRT's provider first; opt-in, its engine builds take minutes
    max_rows: int = 1024  # TensorRT's shape profile: the largest batch and sequence it must accept
    max_length: int = 512
    # onnxruntime's transformer optimizer (fused attention, LayerNorm, GELU), kept only where it agrees with
    # the file as exported (FUSED_TOLERANCE, same argmax) on probe texts: 1.1x rows/s on a CPU, measured.
    fuse: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimization", GraphOptimization.parse(self.optimization, "ONNX optimization"))


def resolve_onnx_device(requested: str) -> torch.device:
    """`auto`: CUDA when onnxruntime has its provider and a GPU is present, else CPU; CUDA asked for but
    not in this onnxruntime is an error (the CPU wheel `onnxruntime` has no CUDA provider)."""
    ort = import_optional("onnxruntime")
    available = ort.get_available_providers()
    if requested == "auto":
        return torch.device("cuda" if _CUDA in available and torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", requested):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], not '{requested}'.")
    if _CUDA not in available:
        raise ConfigError(
            f"--device {requested} with the onnx backend needs onnxruntime's CUDA provider, which onnxruntime "
            f"{ort.__version__} here lacks (it has {', '.join(available)}); replace it with onnxruntime-gpu "
            "(pip uninstall -y onnxruntime, then install the onnx-gpu extra) or use --device cpu."
        )
    return torch.device(requested)


def open_session(path: Path, device: torch.device, options: OnnxOptions = OnnxOptions(), model: bytes | None = None):
    """(session, providers it actually runs on), refusing a session that silently fell back to the CPU.
    `model`: the serialized graph to run instead of the file's own (a fused one); `path` names it."""
    ort = import_optional("onnxruntime")
    settings = ort.SessionOptions()
    settings.graph_optimization_level = getattr(ort.GraphOptimizationLevel, options.optimization.level)
    settings.intra_op_num_threads = options.threads or torch.get_num_threads()
    if not options.spinning:
        settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
    settings.log_severity_level = 3  # errors only: the per-node "assigned to CPU" notices are expected
    wanted = _providers(device, options)
    try:
        session = ort.InferenceSession(model if model is not None else str(path), sess_options=settings, providers=wanted)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TeacherError(f"onnxruntime cannot load {path} ({first}); re-export it with `mtkd-cache export`.") from None
    got = session.get_providers()
    for name, _ in (p if isinstance(p, tuple) else (p, None) for p in wanted[:-1]):
        if name not in got:
            raise TeacherError(
                f"onnxruntime did not start its {name} for {path} (the session runs on {', '.join(got)}); "
                "check that the installed CUDA/cuDNN (and TensorRT) match onnxruntime-gpu's requirements, or use --device cpu."
            )
    return session, list(got)


def _providers(device: torch.device, options: OnnxOptions) -> list:
    if device.type != "cuda":
        return [_CPU]
    # CPU stays last so operators without a CUDA kernel still run; the check above is about the main provider.
    chosen: list = [(_CUDA, {"device_id": device.index or 0}), _CPU]
    if options.tensorrt:
        shape = lambda rows, length: ",".join(f"{n}:{rows}x{length}" for n in MODEL_INPUTS)  # noqa: E731
        cache = Path.home() / ".cache" / "mtkd-cache" / "tensorrt"
        chosen.insert(0, (_TENSORRT, {
            "device_id": device.index or 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            # One profile spanning every batch the token budget can form, so new shapes do not rebuild engines.
            "trt_profile_min_shapes": shape(1, 1), "trt_profile_max_shapes": shape(options.max_rows, options.max_length),
            "trt_profile_opt_shapes": shape(max(1, options.max_rows // 8), max(1, options.max_length // 2)),
        }))
    return chosen


FUSED_TOLERANCE = 1e-4  # largest |fused - exported| logit on the probe texts for the fused graph to be used
_PROBE_TEXTS = ("A short one.", "The committee approved the budget after a long debate on taxes and spending.",
                "Scores: 3-1. " * 12, "naïve café — 東京 ✓ emoji 🙂 and numbers 12,345.67")


def fused_graph(path: Path) -> bytes | None:
    """The file after onnxruntime's transformer optimizer (BERT-family fusions), serialized; None where the
    optimizer is not installed, fails on the graph, or finds nothing to fuse."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        return None
    import logging

    # Its modules log under their bare file names; their per-fusion notices are not the build's business.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        num_heads, hidden = _attention_shape(path)
        optimized = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden)
    except Exception:  # a graph it does not understand: run the file as exported
        return None
    finally:
        logging.disable(previous)
    if not any(optimized.get_fused_operator_statistics().values()):
        return None
    return optimized.model.SerializeToString()


def _attention_shape(path: Path) -> tuple[int, int]:
    """(attention heads, hidden size) of a BERT-family graph, which the optimizer cannot always read from a
    torch export: hidden is the size of the square weight matrices (Q, K, V, output), the head size follows
    from eager attention's scaling of QK^T (x head_size^-0.5, or / head_size^0.5). (0, 0): not found, the
    optimizer then fuses what it can without attention."""
    from collections import Counter

    onnx = import_optional("onnx")
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    values = dict(weights)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    squares = Counter(w.shape[0] for w in weights.values() if w.ndim == 2 and w.shape[0] == w.shape[1])
    if not squares:
        return 0, 0
    hidden = squares.most_common(1)[0][0]
    producers = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            continue
        for scale_name, other in (node.input, node.input[::-1]):
            scale, source = values.get(scale_name), producers.get(other)
            if scale is None or scale.size != 1 or source is None or source.op_type != "MatMul" \
                    or any(name in weights for name in source.input):  # QK^T multiplies two activations
                continue
            factor = float(scale.reshape(()))
            head_size = round(factor * factor if node.op_type == "Div" else 1 / (factor * factor)) if factor else 0
            if head_size > 0 and hidden % head_size == 0:
                return hidden // head_size, hidden
    return 0, 0


class OnnxTeacher:
    """An exported classifier in an onnxruntime session (a `TeacherRunner`)."""

    def __init__(self, name: str, path: Path, device: torch.device, options: OnnxOptions = OnnxOptions()):
        from transformers import AutoTokenizer

        self.name = name
        self.device = device
        if not any((path.parent / f).exists() for f in TOKENIZER_FILES):
            raise TeacherError(f"no tokenizer files beside {path}; `mtkd-cache export` saves them there, or save the "
                               "model's tokenizer into that directory.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path.parent)
        except (OSError, ValueError) as error:
            raise TeacherError(f"cannot load the tokenizer beside {path}: {str(error).splitlines()[0]}; "
                               "`mtkd-cache export` saves it there.") from error
        self.session, self.providers = open_session(path, device, options)
        inputs = {i.name: i for i in self.session.get_inputs()}
        unknown = sorted(set(inputs) - set(MODEL_INPUTS))
        if unknown:
            raise TeacherError(f"{path} expects inputs {unknown}, which a text classifier does not take; "
                               f"it may take only {', '.join(MODEL_INPUTS)}.")
        self.input_names = tuple(n for n in MODEL_INPUTS if n in inputs)
        self._input_types = {n: np.int32 if inputs[n].type == "tensor(int32)" else np.int64 for n in self.input_names}
        self.output_name = self.session.get_outputs()[0].name
        self.attn_implementation = "onnxruntime"
        if options.fuse:
            self._use_fused_graph_if_faithful(path, device, options)
        # IO binding on CUDA: inputs are copied to the GPU once and the output is allocated there, instead of
        # onnxruntime staging every tensor through its own host buffers on each run.
        self.io_binding = ("cuda", device.index or 0) if device.type == "cuda" else None
        self.pad_left = self.tokenizer.padding_side == "left"
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _use_fused_graph_if_faithful(self, path: Path, device: torch.device, options: OnnxOptions) -> None:
        """Swap in the fused graph when it gives the exported file's logits (within FUSED_TOLERANCE, same
        argmax) on probe texts of several lengths, padded together; the manifest records which ran."""
        fused = fused_graph(path)
        if fused is None:
            return
        try:
            session, providers = open_session(path, device, options, model=fused)
        except TeacherError:
            return
        probe = dict(self.tokenizer(list(_PROBE_TEXTS), padding=True, truncation=True, max_length=128,
                                    return_tensors="np"))
        exported = self._run(self.session, probe)
        candidate = self._run(session, probe)
        if np.abs(exported - candidate).max() <= FUSED_TOLERANCE and (exported.argmax(1) == candidate.argmax(1)).all():
            self.session, self.providers = session, providers
            self.attn_implementation = "onnxruntime, fused by onnxruntime.transformers.optimizer"

    def _run(self, session, batch: dict[str, np.ndarray]) -> np.ndarray:
        feed = self._feed(batch)
        return session.run([self.output_name], feed)[0].astype(np.float32, copy=False)

    def _feed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.input_names:
            # A graph may want token_type_ids that a tokenizer does not emit: single-segment zeros then.
            array = batch[name] if name in batch else np.zeros_like(batch["input_ids"])
            feed[name] = np.ascontiguousarray(array, dtype=self._input_types[name])
        return feed

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """float32 logits [rows, model labels] for one padded batch."""
        if self.io_binding is None:
            return self._run(self.session, batch)
        feed = self._feed(batch)
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self.output_name, *self.io_binding)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)
