"""Size and CPU speed of saved models, measured the same way for teachers and students, for the frontier.

Each model is exported to fp32 ONNX in a scratch directory (its file size is the ONNX file's), then timed on
the CPU at batch 1 and batch 32 with torch and with onnxruntime, tokenization included, on the texts it is
judged on. Timings are wall-clock on whatever else the machine is doing: read them beside the load average.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mtkd_cache.distillation.students import count_parameters
from mtkd_cache.errors import ConfigError
from mtkd_cache.report.frontier import FrontierPoint, Role
from mtkd_cache.report.run_report import load_run_report
from mtkd_cache.serve.export import ExportConfig, export_model, load_model_dir, model_input_names
from mtkd_cache.serve.quantize import evaluation_rows, ms_per_sample, onnx_logits

BATCH_SIZES = (1, 32)


def torch_logits(model, tokenizer, input_names: tuple[str, ...], max_length: int):
    """texts (and pairs) -> float32 logits from the torch model on the CPU."""

    @torch.inference_mode()
    def run(texts: list[str], pairs: list[str | None] | None = None) -> np.ndarray:
        args = (texts, pairs) if pairs else (texts,)
        encoded = tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        feed = {n: encoded[n] if n in encoded else torch.zeros_like(encoded["input_ids"]) for n in input_names}
        return model(**feed).logits.float().numpy()

    return run


def measure_point(model_dir: Path, name: str, role: Role, accuracy: float, texts: Sequence[str],
                  max_length: int = 128) -> FrontierPoint:
    """`model_dir`'s parameters, fp32 ONNX size and CPU ms/sample at batch 1 and 32 (torch, onnxruntime)."""
    model, tokenizer, kind, _ = load_model_dir(model_dir)
    model.to("cpu")
    input_names = model_input_names(model, tokenizer, kind)
    texts = list(texts)
    torch_run = torch_logits(model, tokenizer, input_names, max_length)
    torch_ms = {b: ms_per_sample(torch_run, texts, b) for b in BATCH_SIZES}
    with tempfile.TemporaryDirectory(prefix="mtkd-speed-") as scratch:
        exported = export_model(ExportConfig(model_dir=model_dir, out=Path(scratch) / "model.onnx",
                                             max_length=max_length))
        onnx_run = onnx_logits(exported.out, tokenizer, input_names, max_length)
        onnx_ms = {b: ms_per_sample(onnx_run, texts, b) for b in BATCH_SIZES}
        size = exported.bytes
    return FrontierPoint(name=name, role=role, kind=kind if role is not Role.TEACHER else "teacher",
                         accuracy=accuracy, parameters=count_parameters(model), file_bytes=size, torch_ms=torch_ms,
                         onnx_ms=onnx_ms)


def run_points(run_dirs: Sequence[Path], max_length: int = 128) -> list[FrontierPoint]:
    """One point per finished run: its report's accuracy; a `finetune` run (no teacher) is a floor."""
    from mtkd_cache.layout import STUDENT_DIR

    points = []
    for run_dir in run_dirs:
        report = load_run_report(run_dir)
        role = Role.FLOOR if report.teaching is None else Role.STUDENT
        rows = evaluation_rows(run_dir / STUDENT_DIR, None, report.eval_split)
        points.append(measure_point(run_dir / STUDENT_DIR, run_dir.name, role, report.accuracy, rows.texts, max_length))
    return points


def teacher_points(run_dirs: Sequence[Path], max_length: int = 128) -> list[FrontierPoint]:
    """The teachers of the first distill run's cache whose local directories still exist, scored from the
    cache on that run's eval split (a cache built from hub ids or ONNX files contributes none)."""
    from mtkd_cache.cache.reader import open_cache

    for run_dir in run_dirs:
        report = load_run_report(run_dir)
        if report.teaching is None or not report.config.get("cache"):
            continue
        cache = open_cache(report.config["cache"])
        inputs, outputs = cache.inputs(report.eval_split), cache.teacher_outputs(report.eval_split)
        labelled = inputs.labels >= 0
        points = []
        for position, name in enumerate(outputs.teachers):
            source = Path(cache.manifest.teachers[name].source)
            if not (source / "config.json").is_file():
                continue
            accuracy = float(np.mean(np.asarray(outputs.preds[:, position])[labelled] == inputs.labels[labelled]))
            points.append(measure_point(source, name, Role.TEACHER, accuracy, list(inputs.texts), max_length))
        return points
    return []


def frontier_points(run_dirs: Sequence[Path], max_length: int = 128) -> list[FrontierPoint]:
    if not run_dirs:
        raise ConfigError("name at least one run directory for the frontier.")
    return teacher_points(run_dirs, max_length) + run_points(run_dirs, max_length)
