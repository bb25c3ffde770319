"""The expert table: which teacher is best on each class (per-class expertise, after the source thesis).

On the expert split, `acc[n, c]` is the share of samples of true class c that teacher n predicts as c.
The expert of class c is `argmax_n acc[n, c]`; ties go to the teacher with the higher overall accuracy,
then to the first teacher by name. The fallback teacher M is the teacher with the highest overall
accuracy (ties: first by name). A class with no sample on the expert split has no accuracy (NaN) and M
as its expert. Choosing experts on `test` and then reporting on `test` leaks test labels into the
student; `--expert-split validation` avoids that.

A per-class accuracy on a small expert split is an estimate. With `--expert-confidence p` a class keeps
its expert only when the posterior probability that the expert is more accurate on that class than M is at
least p; otherwise the class's expert is M. The posterior of each accuracy is Beta(correct + 1, wrong + 1)
(a uniform prior), the two teachers' posteriors taken as independent (they are scored on the same rows,
so this is conservative when they err on the same rows); P(expert > M) is computed exactly. `experts`
prints each accuracy's 95% equal-tailed credible interval.

`fit_temperatures` fits each teacher's temperature T_n by minimising the NLL of softmax(logits / T_n) on
the expert split; strategies use it with `--calibrate` (teachers of different architectures are
calibrated differently, and averaging miscalibrated distributions favours the most confident one).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from mtkd_cache.atomic import write_atomically
from mtkd_cache.cache.reader import Cache
from mtkd_cache.distillation.strategy_config import StrategyConfig
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
    confidence: float | None = None  # set by with_confidence: experts kept only when better than M at this level
    temperatures: np.ndarray | None = None  # float64 [N], set by with_temperatures

    @property
    def fallback_name(self) -> str:
        return self.teachers[self.fallback]

    @property
    def correct_counts(self) -> np.ndarray:
        """int64 [N, K]: rows of class k that teacher n got right (accuracy × class count, exact)."""
        return np.rint(np.nan_to_num(self.per_class_accuracy) * self.class_counts[None, :]).astype(np.int64)

    def credible_intervals(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Credible intervals of every per-class accuracy, float64 [N, K] each (NaN: no sample): equal-tailed,
        except one-sided at an accuracy of 0 or 1, where an equal-tailed interval would exclude the accuracy."""
        correct, counts = self.correct_counts, self.class_counts
        low, high = np.full(correct.shape, np.nan), np.full(correct.shape, np.nan)
        for n, k in np.ndindex(correct.shape):
            if not counts[k]:
                continue
            a, b = correct[n, k] + 1, counts[k] - correct[n, k] + 1
            if correct[n, k] == counts[k]:
                low[n, k], high[n, k] = beta_quantile(1 - level, a, b), 1.0
            elif correct[n, k] == 0:
                low[n, k], high[n, k] = 0.0, beta_quantile(level, a, b)
            else:
                low[n, k], high[n, k] = beta_quantile((1 - level) / 2, a, b), beta_quantile((1 + level) / 2, a, b)
        return low, high

    def probability_better_than_fallback(self) -> np.ndarray:
        """float64 [N, K]: P(teacher n is more accurate than M on class k) under the Beta posteriors."""
        correct, counts, m = self.correct_counts, self.class_counts, self.fallback
        better = np.full(correct.shape, np.nan)
        for n, k in np.ndindex(correct.shape):
            if counts[k]:
                better[n, k] = probability_greater(correct[n, k] + 1, counts[k] - correct[n, k] + 1,
                                                   correct[m, k] + 1, counts[k] - correct[m, k] + 1)
        return better

    def with_confidence(self, level: float) -> ExpertTable:
        """The table whose class experts are kept only when better than M with posterior probability ≥ level."""
        better = self.probability_better_than_fallback()
        experts = np.array([e if e == self.fallback or better[e, k] >= level else self.fallback
                            for k, e in enumerate(self.experts)], dtype=np.int64)
        return dataclasses.replace(self, experts=experts, confidence=level)

    def with_temperatures(self, temperatures: np.ndarray) -> ExpertTable:
        return dataclasses.replace(self, temperatures=np.asarray(temperatures, dtype=np.float64))

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
            **({"confidence": self.confidence} if self.confidence is not None else {}),
            **({"temperatures": {t: float(self.temperatures[n]) for n, t in enumerate(self.teachers)}}
               if self.temperatures is not None else {}),
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
            confidence=raw.get("confidence"),
            temperatures=np.array([raw["temperatures"][t] for t in teachers]) if "temperatures" in raw else None,
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


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_cdf(x: float, a: int, b: int) -> float:
    """P(X ≤ x) for X ~ Beta(a, b) with integer a, b ≥ 1: the binomial tail P(Bin(a + b − 1, x) ≥ a)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    n = a + b - 1
    log_x, log_1mx = math.log(x), math.log1p(-x)
    return float(sum(math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_x
                              + (n - j) * log_1mx) for j in range(a, n + 1)))


def beta_quantile(q: float, a: int, b: int) -> float:
    """The q-quantile of Beta(a, b), by bisection on beta_cdf (to 1e-9)."""
    low, high = 0.0, 1.0
    while high - low > 1e-9:
        middle = (low + high) / 2
        low, high = (middle, high) if beta_cdf(middle, a, b) < q else (low, middle)
    return (low + high) / 2


def probability_greater(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(X > Y) for independent X ~ Beta(a1, b1), Y ~ Beta(a2, b2), integer a1 (the exact finite sum)."""
    total = sum(math.exp(_log_beta(a2 + i, b1 + b2) - math.log(b1 + i) - _log_beta(1 + i, b1) - _log_beta(a2, b2))
                for i in range(a1))
    return min(1.0, max(0.0, total))


def fit_temperatures(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> np.ndarray:
    """Per teacher, the T in [low, high] minimising the mean NLL of softmax(logits / T) on the labeled rows:
    `logits` float [S, N, K], `labels` int [S] (-1 ignored). Golden-section search on log T (the NLL is
    unimodal in T); deterministic, float64."""
    labeled = labels >= 0
    if not labeled.any():
        raise DataError("no labeled row to fit the teachers' temperatures on; use a labeled --expert-split.")
    z = logits[labeled].astype(np.float64)  # [S, N, K]
    gold = z[np.arange(len(z)), :, labels[labeled]]  # [S, N]

    def nll(n: int, log_t: float) -> float:
        scaled = z[:, n] / math.exp(log_t)
        peak = scaled.max(axis=1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(scaled - peak).sum(axis=1))
        return float(np.mean(log_norm - gold[:, n] / math.exp(log_t)))

    ratio = (math.sqrt(5) - 1) / 2
    temperatures = np.empty(z.shape[1])
    for n in range(z.shape[1]):
        a, b = math.log(low), math.log(high)
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        fc, fd = nll(n, c), nll(n, d)
        while b - a > 1e-5:
            if fc <= fd:
                b, d, fd = d, c, fc
                c = b - ratio * (b - a)
                fc = nll(n, c)
            else:
                a, c, fc = c, d, fd
                d = a + ratio * (b - a)
                fd = nll(n, d)
        temperatures[n] = math.exp((a + b) / 2)
    return temperatures


def expert_table_path(cache_dir: Path, split: str, teachers: tuple[str, ...]) -> Path:
    return cache_dir / EXPERTS_DIR / f"{split}--{'+'.join(teachers)}.json"


def save_expert_table(cache_dir: Path, table: ExpertTable, dataset_fingerprint: str) -> Path:
    """Stored beside the manifest (a derived file: recomputable, keyed by split and teacher set)."""
    path = expert_table_path(cache_dir, table.split, table.teachers)
    write_atomically(path, json.dumps({"dataset_fingerprint": dataset_fingerprint, **table.to_json()}, indent=1),
                     durable=False)
    return path


def expert_table_for(cache: Cache, split: str, teachers: tuple[str, ...], preds: np.ndarray | None = None,
                     labels: np.ndarray | None = None, strategy: StrategyConfig | None = None) -> ExpertTable:
    """The expert table of `teachers` on `split`, also stored beside the manifest for `select` and the report;
    with `strategy`, as that strategy uses it (see `for_strategy`).

    `preds` int [S, N] and `labels` int [S] when the caller already holds them (a PreparedCache); read from
    the cache otherwise. numpy and polars only: `mtkd-cache experts` does not load torch."""
    preds = cache.teacher_outputs(split, teachers).preds if preds is None else preds
    labels = cache.inputs(split).labels if labels is None else labels
    table = compute_expert_table(preds, labels, teachers, cache.label_names, split)
    store_expert_table(cache, table)
    if strategy is None:
        return table
    return for_strategy(table, strategy, lambda: cache.teacher_outputs(split, teachers).logits, labels, cache)


def for_strategy(table: ExpertTable, strategy: StrategyConfig, logits: Callable[[], np.ndarray], labels: np.ndarray,
                 cache: Cache | None = None) -> ExpertTable:
    """The table as `strategy` uses it. With `calibrate`, the teachers' temperatures fitted on the table's split
    (`logits()`: float [S, N, K] of that split, read only then; the calibrated table is stored when `cache` is
    given); with `expert_confidence`, its experts kept only where better than M at that level (never stored:
    the stored table is the plain rule's)."""
    if strategy.calibrate:
        table = table.with_temperatures(fit_temperatures(np.asarray(logits(), dtype=np.float32), labels))
        if cache is not None:
            store_expert_table(cache, table)
    if strategy.expert_confidence is not None:
        table = table.with_confidence(strategy.expert_confidence)
    return table


def store_expert_table(cache: Cache, table: ExpertTable) -> None:
    try:
        save_expert_table(cache.path, table, cache.manifest.dataset.fingerprint)
    except (OSError, CacheWriteError):
        pass  # a read-only shared cache: the table is recomputed next time, nothing is lost


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
