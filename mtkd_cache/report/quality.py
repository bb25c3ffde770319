"""Statistics of a sweep that a claim "distillation helps" can stand on: per configuration the score's mean
and standard deviation over seeds, and its paired difference to the no-teacher floor (`--strategy none`)
and to `average`.

Pairs are runs of the same seed and teacher subset: the same student initialisation and the same batches,
so the seed's own noise cancels in the difference. For each comparison we report the mean and standard
deviation of the paired differences, whether the mean exceeds two standard deviations of the differences
(the goal the quality benchmark holds the method to), and the exact two-sided p-value of a sign-flip
permutation test (no distribution assumed; with n pairs the smallest possible p-value is 2 / 2**n, so five
seeds can never go below 0.0625 — say so rather than over-read it).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
import polars as pl

FLOOR = "none"
AVERAGE = "average"


@dataclass(frozen=True)
class PairedDifference:
    """A configuration minus a reference, over the runs both have (same seed and teacher subset)."""

    pairs: int
    mean: float
    sd: float  # of the differences; 0 with one pair
    p_value: float  # exact two-sided sign-flip permutation test

    @property
    def beyond_two_sd(self) -> bool:
        """Is the mean difference positive and larger than two standard deviations of the differences?"""
        return self.pairs >= 2 and self.mean > 2 * self.sd


@dataclass(frozen=True)
class ConfigurationQuality:
    strategy: str
    alpha: float
    temperature: float
    runs: int
    mean: float
    sd: float
    versus_floor: PairedDifference | None
    versus_average: PairedDifference | None


EXACT_PAIRS = 16  # up to 2**16 sign patterns are enumerated; beyond, a seeded sample of them
SAMPLED_FLIPS = 100_000


def sign_flip_p_value(differences: list[float]) -> float:
    """P(|mean of randomly signed differences| ≥ |observed mean|): exact over all 2**n signs for n ≤ 16 pairs,
    else estimated from 100,000 sign patterns drawn with a fixed seed (a sweep over many teacher subsets
    has hundreds of pairs, and 2**n would never finish)."""
    if not differences:
        return 1.0
    values = np.asarray(differences, dtype=np.float64)
    observed = abs(values.mean()) - 1e-12  # ties with the observed mean count as extreme
    if len(values) <= EXACT_PAIRS:
        signs = 1 - 2 * ((np.arange(2 ** len(values))[:, None] >> np.arange(len(values))) & 1)
    else:
        signs = np.random.default_rng(0).choice((-1, 1), size=(SAMPLED_FLIPS, len(values)))
    return float((np.abs((signs * values).mean(axis=1)) >= observed).mean())


def paired_difference(scores: dict[tuple, float], reference: dict[tuple, float]) -> PairedDifference | None:
    keys = sorted(set(scores) & set(reference))
    if not keys:
        return None
    differences = [scores[k] - reference[k] for k in keys]
    sd = statistics.stdev(differences) if len(differences) > 1 else 0.0
    return PairedDifference(len(keys), statistics.fmean(differences), sd, sign_flip_p_value(differences))


def _scores(frame: pl.DataFrame, metric: str) -> dict[tuple, float]:
    return {(row["seed"], row["teachers"]): row[metric] for row in frame.iter_rows(named=True)}


def quality_table(frame: pl.DataFrame, metric: str, config_columns: list[str]) -> list[ConfigurationQuality]:
    """Every configuration (strategy, α, T: `config_columns`) of a leaderboard frame, best mean first.
    Against `average`, the `average` runs of the same α and T are the reference (none: no comparison)."""
    floor = _scores(frame.filter(pl.col("strategy") == FLOOR), metric)
    result = []
    for (strategy, alpha, temperature), group in frame.group_by(config_columns, maintain_order=True):
        scores = _scores(group, metric)
        average = frame.filter((pl.col("strategy") == AVERAGE) & (pl.col("alpha") == alpha)
                               & (pl.col("temperature") == temperature))
        values = list(scores.values())
        result.append(ConfigurationQuality(
            strategy, alpha, temperature, len(values), statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0,
            paired_difference(scores, floor) if strategy != FLOOR else None,
            paired_difference(scores, _scores(average, metric)) if strategy != AVERAGE else None))
    return sorted(result, key=lambda q: -q.mean)


def quality_markdown(table: list[ConfigurationQuality], metric: str) -> list[str]:
    def cell(difference: PairedDifference | None) -> str:
        if difference is None:
            return "–"
        mark = " ✓" if difference.beyond_two_sd else ""
        return f"{difference.mean:+.4f} ± {difference.sd:.4f} (p={difference.p_value:.3f}, n={difference.pairs}){mark}"

    lines = [f"| strategy | α | T | runs | {metric} mean ± sd | − no teacher (paired) | − average (paired) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {q.strategy} | {q.alpha:g} | {q.temperature:g} | {q.runs} | {q.mean:.4f} ± {q.sd:.4f} | "
              f"{cell(q.versus_floor)} | {cell(q.versus_average)} |" for q in table]
    lines += ["", "✓: the mean paired difference exceeds two standard deviations of the differences. p: exact "
              "two-sided sign-flip test over the pairs (with n pairs it cannot go below 2/2ⁿ)."]
    return lines
