"""The expert table: which teacher is best on each class (per-class expertise, after the source thesis).

On the expert split, `acc[n, c]` is the share of samples of true class c that teacher n predicts as c.
The expert of class c is `argmax_n acc[n, c]`; ties go to the teacher with the higher overall accuracy,
then to the first teacher by name. The fallback teacher M is the teacher with the highest overall
accuracy (ties: first by name). A class with no sample on the expert split has no accuracy (NaN) and M
as its expert. Choosing experts on `test` and then reporting on `test` leaks test labels into the
student; `--expert-split validation` avoids that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from mtkd_cache.atomic import write_atomically
from mtkd_cache.cache.reader import Cache
from mtkd_cache.errors import CacheWriteError, ConfigError, DataError
from mtkd_cache.layout import EXPERTS_DIR


@dataclass
class ExpertTable:
    split: str
    teachers: tuple[str, ...]
    label_names: tuple[str, ...]
    per_class_accuracy: np.ndarray  # float64 [N, K], NaN where the class has no sample
    overall_accuracy: np.ndarray  # float64 [N]
    experts: np.ndarray  # int64 [K], teacher index per class
    fallback: int  # teacher index of M
    class_counts: np.ndarray  # int64 [K], labeled samples per class on the split

    @property
    def fallback_name(self) -> str:
        return self.teachers[self.fallback]

    def to_json(self) -> dict:
        """The documented `experts --json` shape, plus the split and class counts."""
        return {
            "split": self.split,
            "per_class_accuracy": {t: {c: _float(self.per_class_accuracy[n, k]) for k, c in enumerate(self.label_names)}
                                   for n, t in enumerate(self.teachers)},
            "overall_accuracy": {t: float(self.overall_accuracy[n]) for n, t in enumerate(self.teachers)},
            "experts": {c: self.teachers[self.experts[k]] for k, c in enumerate(self.label_names)},
            "fallback": self.fallback_name,
            "class_counts": {c: int(self.class_counts[k]) for k, c in enumerate(self.label_names)},
        }

    @classmethod
    def from_json(cls, raw: dict, teachers: tuple[str, ...], label_names: tuple[str, ...]) -> ExpertTable:
        index = {name: n for n, name in enumerate(teachers)}
        return cls(
            split=raw["split"], teachers=teachers, label_names=label_names,
            per_class_accuracy=np.array([[np.nan if raw["per_class_accuracy"][t][c] is None
                                          else raw["per_class_accuracy"][t][c] for c in label_names] for t in teachers]),
            overall_accuracy=np.array([raw["overall_accuracy"][t] for t in teachers]),
            experts=np.array([index[raw["experts"][c]] for c in label_names], dtype=np.int64),
            fallback=index[raw["fallback"]],
            class_counts=np.array([raw["class_counts"][c] for c in label_names], dtype=np.int64),
        )


def _float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def compute_expert_table(preds: np.ndarray, labels: np.ndarray, teachers: tuple[str, ...],
                         label_names: tuple[str, ...], split: str) -> ExpertTable:
    """`preds` int [S, N] hard predictions, `labels` int [S] (-1 = unlabeled, ignored)."""
    labeled = labels >= 0
    if not labeled.any():
        raise DataError(f"split '{split}' has no labels, so no expert table can be computed on it; use a labeled split.")
    num_teachers, num_labels = len(teachers), len(label_names)
    frame = pl.DataFrame({"label": labels[labeled], **{str(n): preds[labeled, n] for n in range(num_teachers)}})
    long = frame.unpivot(index="label", variable_name="teacher", value_name="pred").with_columns(
        pl.col("teacher").cast(pl.Int64), (pl.col("pred") == pl.col("label")).alias("correct"))
    per_class = long.group_by("teacher", "label").agg(pl.col("correct").mean().alias("accuracy"))
    overall = long.group_by("teacher").agg(pl.col("correct").mean().alias("accuracy")).sort("teacher")
    accuracy = np.full((num_teachers, num_labels), np.nan)
    accuracy[per_class["teacher"].to_numpy(), per_class["label"].to_numpy()] = per_class["accuracy"].to_numpy()
    overall_accuracy = overall["accuracy"].to_numpy().astype(np.float64)
    counts = np.bincount(labels[labeled], minlength=num_labels).astype(np.int64)

    by_overall = sorted(range(num_teachers), key=lambda n: (-overall_accuracy[n], teachers[n]))
    fallback = by_overall[0]
    experts = np.empty(num_labels, dtype=np.int64)
    for k in range(num_labels):  # K is small; the tie-break reads better as a sort key than as tensor code
        if counts[k] == 0:
            experts[k] = fallback
        else:
            experts[k] = min(range(num_teachers), key=lambda n: (-accuracy[n, k], -overall_accuracy[n], teachers[n]))
    return ExpertTable(split, teachers, label_names, accuracy, overall_accuracy, experts, fallback, counts)


def expert_table_path(cache_dir: Path, split: str, teachers: tuple[str, ...]) -> Path:
    return cache_dir / EXPERTS_DIR / f"{split}--{'+'.join(teachers)}.json"


def save_expert_table(cache_dir: Path, table: ExpertTable, dataset_fingerprint: str) -> Path:
    """Stored beside the manifest (a derived file: recomputable, keyed by split and teacher set)."""
    path = expert_table_path(cache_dir, table.split, table.teachers)
    write_atomically(path, json.dumps({"dataset_fingerprint": dataset_fingerprint, **table.to_json()}, indent=1),
                     durable=False)
    return path


def expert_table_for(cache: Cache, split: str, teachers: tuple[str, ...], preds: np.ndarray | None = None,
                     labels: np.ndarray | None = None) -> ExpertTable:
    """The expert table of `teachers` on `split`, also stored beside the manifest for `select` and the report.

    `preds` int [S, N] and `labels` int [S] when the caller already holds them (a PreparedCache); read from
    the cache otherwise. numpy and polars only: `mtkd-cache experts` does not load torch."""
    preds = cache.teacher_outputs(split, teachers).preds if preds is None else preds
    labels = cache.inputs(split).labels if labels is None else labels
    table = compute_expert_table(preds, labels, teachers, cache.label_names, split)
    try:
        save_expert_table(cache.path, table, cache.manifest.dataset.fingerprint)
    except (OSError, CacheWriteError):
        pass  # a read-only shared cache: the table is recomputed next time, nothing is lost
    return table


def parse_teacher_subset(value: str | tuple[str, ...] | None, available: tuple[str, ...]) -> tuple[str, ...]:
    """The named teachers (a tuple, or a comma-separated string), checked against the cache's; all when none."""
    if not value:
        return available
    names = tuple(part.strip() for part in (value.split(",") if isinstance(value, str) else value) if part.strip())
    unknown = [n for n in names if n not in available]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"--teachers {','.join(names)}: the cache's teachers are {', '.join(available)}; "
                          "name each once.")
    return names
