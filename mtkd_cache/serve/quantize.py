"""`export --quantize int8`: onnxruntime's dynamic quantization of an exported graph, judged by accuracy.

Logit parity cannot hold for an int8 graph, so the check is on labels: the fp32 and the int8 graph both
classify a labelled split (a run's eval split, or `--eval-data`), and the report gives each one's accuracy,
the drop in points, the share of rows where they agree, both file sizes and CPU latency at batch 1 and 32.
A drop above `max_drop` marks the export failed; the file is kept for inspection.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtkd_cache.choices import Choice
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import RUN_CONFIG

LATENCY_ROWS = 64  # rows timed per batch size: enough to steady the figure, few enough for a quick export


class Quantization(Choice):
    INT8 = "int8"

    @classmethod
    def parse(cls, value: object, flag: str = "--quantize") -> Quantization:
        return super().parse(value, flag)


@dataclass(frozen=True)
class LabelledTexts:
    texts: list[str]
    pairs: list[str | None] | None
    gold: list[str]  # label names, row-aligned
    source: str  # where the rows came from, for the report


@dataclass
class QuantizationReport:
    rows: int
    source: str
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float  # share of rows where the int8 and fp32 graphs predict the same label
    fp32_bytes: int
    int8_bytes: int
    fp32_ms: dict[int, float]  # batch size -> CPU ms per sample
    int8_ms: dict[int, float]
    max_drop: float  # accuracy points

    @property
    def drop(self) -> float:
        """fp32 accuracy minus int8 accuracy, in points."""
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    @property
    def ok(self) -> bool:
        return self.drop <= self.max_drop


def evaluation_rows(model_dir: Path, eval_data: Path | None, eval_split: str | None) -> LabelledTexts:
    """The labelled rows the int8 graph is judged on: `eval_data`'s split when given, else the eval split of
    the run whose student/ `model_dir` is (read from its cache, or its finetune dataset)."""
    if eval_data is not None:
        return _dataset_rows(str(eval_data), eval_split or "test", "--eval-data")
    record_path = model_dir.parent / RUN_CONFIG
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"--quantize checks accuracy on labelled rows: {model_dir} is not a run's student/ "
                          "directory, so pass --eval-data DATASET (and --eval-split).") from None
    split = eval_split or record.get("eval_split", "test")
    if record.get("cache"):
        from mtkd_cache.cache.reader import open_cache

        cache = open_cache(record["cache"])
        if split not in cache.split_names:
            raise ConfigError(f"--eval-split {split}: the run's cache has splits {', '.join(cache.split_names)}.")
        inputs = cache.inputs(split)
        labelled = [i for i, y in enumerate(inputs.labels.tolist()) if y >= 0]
        pairs = inputs.text_pairs
        return LabelledTexts([inputs.texts[i] for i in labelled], [pairs[i] for i in labelled] if pairs else None,
                             [cache.label_names[int(inputs.labels[i])] for i in labelled], f"{record['cache']}:{split}")
    dataset = record.get("dataset") or {}
    if not dataset.get("source"):
        raise ConfigError(f"{record_path} names neither a cache nor a dataset; pass --eval-data DATASET.")
    return _dataset_rows(dataset["source"], split, "the run's dataset")


def _dataset_rows(source: str, split: str, what: str) -> LabelledTexts:
    from mtkd_cache.data.datasets import DatasetSpec, load_task_data

    task = load_task_data(DatasetSpec(source=source))
    if split not in task.splits:
        raise ConfigError(f"--eval-split {split}: {what} has splits {', '.join(task.splits)}.")
    data = task.splits[split]
    labelled = [i for i, y in enumerate(data.labels.tolist()) if y >= 0]
    if not labelled:
        raise ConfigError(f"--eval-split {split} of {source} has no labels; choose a labelled split.")
    pairs = data.text_pairs
    return LabelledTexts([data.texts[i] for i in labelled], [pairs[i] for i in labelled] if pairs else None,
                         [task.label_names[int(data.labels[i])] for i in labelled], f"{source}:{split}")


def quantize_graph(fp32: Path, int8: Path) -> None:
    """Dynamic int8 quantization (weights int8, activations quantized at run time), metadata carried over."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process shapes is for static quantization of CNNs
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    source, target = onnx.load(str(fp32), load_external_data=False), onnx.load(str(int8), load_external_data=False)
    present = {entry.key for entry in target.metadata_props}
    for entry in source.metadata_props:
        if entry.key not in present:
            target.metadata_props.add(key=entry.key, value=entry.value)
    onnx.save(target, str(int8))


def onnx_logits(path: Path, tokenizer, input_names: tuple[str, ...], max_length: int) -> Callable:
    """texts (and pairs) -> float32 logits from a fresh CPU onnxruntime session on `path`."""
    from mtkd_cache.runners.onnx_runner import open_session

    session, _ = open_session(path, torch.device("cpu"))

    def run(texts: list[str], pairs: list[str | None] | None = None) -> np.ndarray:
        args = (texts, pairs) if pairs else (texts,)
        encoded = tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feed = {n: encoded[n].astype(np.int64) if n in encoded else np.zeros_like(encoded["input_ids"], np.int64)
                for n in input_names}
        return session.run(["logits"], feed)[0]

    return run


def predicted_labels(logits_of: Callable, rows: LabelledTexts, label_names: tuple[str, ...],
                     batch_size: int = 32) -> list[str]:
    found = []
    for start in range(0, len(rows.texts), batch_size):
        pairs = rows.pairs[start:start + batch_size] if rows.pairs else None
        found += [label_names[k] for k in logits_of(rows.texts[start:start + batch_size], pairs).argmax(axis=1)]
    return found


def ms_per_sample(logits_of: Callable, texts: list[str], batch_size: int) -> float:
    """CPU milliseconds per text at `batch_size`, tokenization included, after one warm-up batch."""
    texts = (texts * (1 + LATENCY_ROWS // max(1, len(texts))))[:LATENCY_ROWS]
    logits_of(texts[:batch_size])
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        logits_of(texts[start:start + batch_size])
    return 1000 * (time.perf_counter() - started) / len(texts)


def check_quantized(fp32: Path, int8: Path, tokenizer, input_names: tuple[str, ...], label_names: tuple[str, ...],
                    rows: LabelledTexts, max_length: int, max_drop: float) -> QuantizationReport:
    fp32_run = onnx_logits(fp32, tokenizer, input_names, max_length)
    int8_run = onnx_logits(int8, tokenizer, input_names, max_length)
    fp32_labels = predicted_labels(fp32_run, rows, label_names)
    int8_labels = predicted_labels(int8_run, rows, label_names)
    gold = rows.gold
    return QuantizationReport(
        rows=len(gold), source=rows.source,
        fp32_accuracy=float(np.mean([p == g for p, g in zip(fp32_labels, gold)])),
        int8_accuracy=float(np.mean([p == g for p, g in zip(int8_labels, gold)])),
        agreement=float(np.mean([a == b for a, b in zip(fp32_labels, int8_labels)])),
        fp32_bytes=fp32.stat().st_size, int8_bytes=int8.stat().st_size,
        fp32_ms={b: ms_per_sample(fp32_run, rows.texts, b) for b in (1, 32)},
        int8_ms={b: ms_per_sample(int8_run, rows.texts, b) for b in (1, 32)}, max_drop=max_drop)
