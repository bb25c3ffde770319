"""`export`: a teacher or a distilled student as an ONNX file for serving and for the onnx build backend.

The file takes `input_ids`, `attention_mask` (and `token_type_ids` where the model uses them) of shape
[batch, sequence], both axes dynamic, and returns `logits` [batch, labels]. The label names go into the
file's metadata (`label_names`, a JSON list), the tokenizer beside it. After writing, the file is run by
onnxruntime on sample texts and compared with the torch model: the largest absolute logit difference is
reported, and an export over the tolerance is marked failed.

The TorchScript exporter is the default, as HF optimum uses it: it exports a small BERT in well under a
second where the dynamo exporter takes seconds, and it needs `onnx` only. `dynamo=True` selects the newer
exporter (needs `onnxscript`). A BiLSTM student's packed sequences export with neither, so it is
exported through an equivalent unpacked formulation, checked by the same parity test.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtkd_cache.atomic import temporary_path, write_atomically
from mtkd_cache.distillation.static_student import STATIC_CONFIG, StaticClassifier
from mtkd_cache.distillation.students import BILSTM_CONFIG, BiLSTMClassifier, load_saved_student
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import PACKAGE_VERSION, STUDENT_DIR
from mtkd_cache.runners.model_files import LABEL_NAMES_KEY, import_optional
from mtkd_cache.runners.onnx_runner import MODEL_INPUTS, open_session
from mtkd_cache.serve.quantize import Quantization, QuantizationReport, check_quantized, evaluation_rows, quantize_graph

# Rows of different lengths, so the traced graph sees padding; the repeated one is cut at max_length.
SAMPLE_TEXTS = (
    "a",
    "The match ended in a draw.",
    "Parliament voted on the new data protection law after a long debate in the senate.",
    "The company said its new phone chip would ship next year, and shares rose sharply in early trading. " * 12,
    "The coach praised the team.",
    "Cloud software sales grew for the third quarter in a row, the firm said on Tuesday.",
)


@dataclass(frozen=True)
class ExportConfig:
    model_dir: Path = field(metadata={"help": "A teacher's save_pretrained directory or a distilled student "
                                              "(RUN/student, BiLSTM included)."})
    out: Path = field(metadata={"help": "The .onnx file to write; the tokenizer is saved beside it, so give each "
                                        "model its own directory."})
    max_length: int = field(default=128, metadata={"help": "Truncation of the parity-check texts (the graph takes "
                                                           "any length)."})
    opset: int = field(default=17, metadata={"help": "ONNX opset version."})
    dynamo: bool = field(default=False, metadata={"help": "Use torch's dynamo exporter (needs onnxscript) instead of "
                                                          "the TorchScript one."})
    label_names: tuple[str, ...] | None = field(default=None, metadata={
        "help": "Comma-separated label names in class order, for a BiLSTM saved without them."})
    tolerance: float = field(default=1e-4, metadata={"help": "Largest |torch - onnxruntime| logit difference the "
                                                             "parity check accepts."})
    quantize: Quantization | None = field(default=None, metadata={
        "help": "int8: onnxruntime dynamic quantization; the check becomes accuracy on a labelled split."})
    max_drop: float = field(default=0.5, metadata={"help": "With --quantize: the largest accuracy drop (points) from "
                                                           "the fp32 graph that passes."})
    eval_data: Path | None = field(default=None, metadata={
        "help": "With --quantize: a labelled dataset to judge it on (default: the run's cache and eval split)."})
    eval_split: str | None = field(default=None, metadata={
        "help": "With --quantize: the split to judge it on (default: the run's eval split, else test)."})

    def __post_init__(self):
        if self.quantize is not None:
            object.__setattr__(self, "quantize", Quantization.parse(self.quantize))
        if not self.max_drop >= 0:
            raise ConfigError(f"--max-drop must be 0 or more accuracy points, not {self.max_drop}.")
        if self.quantize is None and (self.eval_data is not None or self.eval_split is not None):
            raise ConfigError("--eval-data and --eval-split judge a quantized export; add --quantize int8.")


@dataclass
class ExportReport:
    out: Path
    kind: str  # "hf", "bilstm" or "static"
    label_names: tuple[str, ...]
    input_names: tuple[str, ...]
    max_abs_diff: float
    parity_rows: int
    tolerance: float
    bytes: int
    seconds: float
    quantization: QuantizationReport | None = None  # --quantize: the fp32 graph's parity, the int8 one's accuracy

    @property
    def parity_ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    @property
    def ok(self) -> bool:
        return self.parity_ok and (self.quantization is None or self.quantization.ok)


def export_model(config: ExportConfig) -> ExportReport:
    started = time.perf_counter()
    onnx = import_optional("onnx")
    if config.out.suffix != ".onnx" or config.out.is_dir():
        raise ConfigError(f"--out {config.out} must be a file name ending in .onnx, e.g. {config.out / 'model.onnx'}.")
    model_dir = model_directory(config.model_dir)
    check_export_target(config.out, model_dir, onnx)
    # The rows a quantized graph is judged on are found first: a run without them is refused before any write.
    rows = evaluation_rows(model_dir, config.eval_data, config.eval_split) if config.quantize else None
    model, tokenizer, kind, label_names = load_model_dir(model_dir, config.label_names)
    if tokenizer.padding_side == "left" and kind == "bilstm":
        raise ConfigError(f"{config.model_dir}: a BiLSTM student reads right-padded rows; its tokenizer pads left.")
    input_names = model_input_names(model, tokenizer, kind)
    if input_names[:2] != ("input_ids", "attention_mask"):
        raise ConfigError(f"{config.model_dir}: the model does not take input_ids and attention_mask, so it is not a "
                          "text classifier this export knows.")
    # References from the model as it is served (SDPA attention), before it is switched for tracing.
    checks = _parity_batches(model, tokenizer, input_names, config.max_length)
    if kind == "hf":
        # Eager attention materializes the padding mask in the graph for any batch; SDPA's mask helpers
        # may skip it on an unpadded example, and the ORT transformer optimizer recognizes eager attention.
        model.set_attn_implementation("eager")
    module = _BiLSTMForExport(model) if kind == "bilstm" else _LogitsOnly(model, input_names)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    # The exporter writes a file of its own choosing; it traces to a hidden scratch file, and the labelled
    # model reaches --out in one atomic write, so --out never holds a graph without its label names.
    traced = temporary_path(config.out.with_name(config.out.name + ".trace"))
    # With --quantize the fp32 graph is a scratch file too: it is checked against torch, then quantized.
    fp32 = temporary_path(config.out.with_name(config.out.name + ".fp32")) if config.quantize else config.out
    int8 = temporary_path(config.out.with_name(config.out.name + ".int8"))
    try:
        _trace(module.eval(), checks[0][0], input_names, traced, config)
        proto = onnx.load(str(traced), load_external_data=False)
        for key, value in ((LABEL_NAMES_KEY, json.dumps(list(label_names))), ("exported_by", f"mtkd-cache {PACKAGE_VERSION}"),
                           ("student_kind", kind)) + ((("quantization", config.quantize.value),) if config.quantize else ()):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        write_atomically(fp32, proto.SerializeToString())
        max_diff, parity_rows = _parity(fp32, input_names, checks)
        quantization = None
        if config.quantize:
            quantize_graph(fp32, int8)
            write_atomically(config.out, int8.read_bytes())
            quantization = check_quantized(fp32, config.out, tokenizer, input_names, label_names, rows,
                                           config.max_length, config.max_drop)
    finally:
        for scratch in (traced, int8, *((fp32,) if config.quantize else ())):
            scratch.unlink(missing_ok=True)
    tokenizer.save_pretrained(config.out.parent)
    return ExportReport(out=config.out, kind=kind, label_names=label_names, input_names=input_names,
                        max_abs_diff=max_diff, parity_rows=parity_rows, tolerance=config.tolerance,
                        bytes=config.out.stat().st_size, seconds=time.perf_counter() - started, quantization=quantization)


def check_export_target(out: Path, model_dir: Path, onnx) -> None:
    """Refuse an --out whose write would destroy something that is not ours: an existing file that is not an
    export of this tool, or a directory holding another model (its tokenizer files would be replaced by this
    model's). Re-exporting over an earlier export, or beside the model's own files, is fine."""
    if out.exists():
        try:
            props = {entry.key: entry.value for entry in onnx.load(str(out), load_external_data=False).metadata_props}
        except Exception:  # not ONNX at all: whatever onnx raises, the answer is the same
            props = {}
        if not props.get("exported_by", "").startswith("mtkd-cache"):
            raise ConfigError(f"--out {out} exists and is not an ONNX export of mtkd-cache; choose another file name.")
    parent = out.parent
    holds_model = any((parent / name).exists() for name in ("config.json", BILSTM_CONFIG, STATIC_CONFIG))
    if holds_model and parent.resolve() != model_dir.resolve():
        raise ConfigError(f"--out {out}: {parent} holds another model, whose tokenizer files the export would "
                          "replace; give the export a directory of its own.")


def _holds_model(directory: Path) -> bool:
    return (directory / "config.json").exists() or (directory / BILSTM_CONFIG).exists()


def model_directory(directory: Path) -> Path:
    """The model directory a user meant: a `distill`/`finetune` run directory stands for its RUN/student (the
    best student); any other directory is taken as it is."""
    student = directory / STUDENT_DIR
    if directory.is_dir() and not _holds_model(directory) and student.is_dir() and _holds_model(student):
        return student
    return directory


def load_model_dir(directory: Path, label_names: tuple[str, ...] | None = None):
    """(model in eval mode, tokenizer, kind "hf", "bilstm" or "static", label names) of a saved teacher or
    student; a run directory means its student/."""
    directory = model_directory(directory)
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise ConfigError(f"{directory} {problem}; pass a save_pretrained directory or a run's student/ directory.")
    if not any((directory / name).exists() for name in ("config.json", BILSTM_CONFIG, STATIC_CONFIG)):
        raise ConfigError(f"{directory} holds no model (no config.json or {BILSTM_CONFIG}); pass a save_pretrained "
                          "directory or a run's student/ directory.")
    try:
        model, tokenizer = load_saved_student(directory)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot load the model in {directory}: {str(error).splitlines()[0]}") from error
    model.eval()
    kind = "bilstm" if isinstance(model, BiLSTMClassifier) else "static" if isinstance(model, StaticClassifier) else "hf"
    return model, tokenizer, kind, model_label_names(model, directory, label_names)


def model_label_names(model, directory: Path, given: tuple[str, ...] | None) -> tuple[str, ...]:
    """Output names in class order: given ones win, then the model's own; a model without any is refused."""
    count = model.config.num_labels
    if given:
        if len(given) != count:
            raise ConfigError(f"--label-names gives {len(given)} names but {directory} predicts {count} classes.")
        return tuple(given)
    if isinstance(model, StaticClassifier):
        return tuple(model.config.label_names)
    if isinstance(model, BiLSTMClassifier):
        if model.config.label_names:
            return tuple(model.config.label_names)
        raise ConfigError(f"{directory} is a BiLSTM saved without label names; pass --label-names with its {count} "
                          "labels in class order.")
    id2label = model.config.id2label or {}
    return tuple(str(id2label.get(i, f"LABEL_{i}")) for i in range(count))


def model_input_names(model, tokenizer, kind: str) -> tuple[str, ...]:
    if kind in ("bilstm", "static"):
        return ("input_ids", "attention_mask")
    import inspect

    accepted = inspect.signature(model.forward).parameters
    emitted = set(tokenizer.model_input_names)
    return tuple(n for n in MODEL_INPUTS if n in accepted and (n in emitted or n != "token_type_ids"))


def _encode(tokenizer, texts, input_names: tuple[str, ...], max_length: int) -> dict[str, torch.Tensor]:
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {n: batch[n] if n in batch else torch.zeros_like(batch["input_ids"]) for n in input_names}


def _call(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs).logits.float()


class _LogitsOnly(nn.Module):
    """Positional inputs in a fixed order and a bare logits tensor: what an ONNX graph's signature is."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(**{n: given[n] for n in self.input_names}).logits


class _BiLSTMForExport(nn.Module):
    """BiLSTMClassifier without packed sequences, same weights and same logits on right-padded rows.

    Packing only makes each direction stop at a row's last real token. Unpacked: the forward direction
    runs over the padded row and is read at position length-1; the backward direction runs over the row
    reversed within its length (padding stays at the end), so its final state has seen exactly the real
    tokens. Deeper layers get both directions' outputs at the real positions, as with packing.
    """

    def __init__(self, model: BiLSTMClassifier):
        super().__init__()
        self.embedding, self.head = model.embedding, model.head
        lstm = model.lstm
        self.directions = nn.ModuleList()
        for layer in range(lstm.num_layers):
            for suffix in ("", "_reverse"):
                single = nn.LSTM(lstm.input_size if layer == 0 else 2 * lstm.hidden_size, lstm.hidden_size,
                                 batch_first=True)
                for weight in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    setattr(single, f"{weight}_l0", getattr(lstm, f"{weight}_l{layer}{suffix}"))
                self.directions.append(single)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(dim=1).clamp(min=1).unsqueeze(1)  # [B, 1]
        steps = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # [1, S]
        reverse = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [B, S], its own inverse
        x = self.embedding(input_ids)
        for layer in range(len(self.directions) // 2):
            forward_out, _ = self.directions[2 * layer](x)
            index = reverse.unsqueeze(2).expand(-1, -1, x.shape[2])
            backward_reversed, _ = self.directions[2 * layer + 1](torch.gather(x, 1, index))
            index = reverse.unsqueeze(2).expand(-1, -1, backward_reversed.shape[2])
            x = torch.cat([forward_out, torch.gather(backward_reversed, 1, index)], dim=2)
        hidden = x.shape[2] // 2
        last = (lengths - 1).unsqueeze(2).expand(-1, 1, hidden)  # [B, 1, H]
        final_forward = torch.gather(x[:, :, :hidden], 1, last).squeeze(1)
        final_backward = x[:, 0, hidden:]  # the backward direction ends at the first token
        return self.head(torch.cat([final_forward, final_backward], dim=1))


def _trace(module: nn.Module, samples: dict[str, torch.Tensor], input_names: tuple[str, ...], path: Path,
           config: ExportConfig) -> None:
    args = tuple(samples[n] for n in input_names)
    with warnings.catch_warnings():
        # Tracer notices about Python-level shape checks: the parity check below is what proves the graph.
        warnings.simplefilter("ignore")
        if config.dynamo:
            import_optional("onnxscript")
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=["logits"],
                              opset_version=max(config.opset, 18), dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=tuple({0: batch, 1: sequence} for _ in input_names))
        else:
            axes = {n: {0: "batch", 1: "sequence"} for n in input_names} | {"logits": {0: "batch"}}
            torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=["logits"],
                              dynamic_axes=axes, opset_version=config.opset, dynamo=False)


def _parity_batches(model, tokenizer, input_names: tuple[str, ...], max_length: int) -> list[tuple[dict, np.ndarray]]:
    """(inputs, torch logits) for the traced batch, one unpadded row and a larger, differently padded batch;
    the first is the tracing example."""
    checks = []
    for texts in (SAMPLE_TEXTS, SAMPLE_TEXTS[1:2], SAMPLE_TEXTS[2::2] * 3):
        encoded = _encode(tokenizer, texts, input_names, max_length)
        with torch.inference_mode():
            checks.append((encoded, _call(model, encoded).numpy()))
    return checks


def _parity(path: Path, input_names: tuple[str, ...], checks: list[tuple[dict, np.ndarray]]) -> tuple[float, int]:
    """Largest |torch - onnxruntime| logit over the check batches, run by a fresh CPU session."""
    session, _ = open_session(path, torch.device("cpu"))
    worst, rows = 0.0, 0
    for inputs, reference in checks:
        got = session.run(["logits"], {n: inputs[n].numpy() for n in input_names})[0]
        worst = max(worst, float(np.abs(got.astype(np.float32) - reference).max()))
        rows += len(reference)
    return worst, rows
