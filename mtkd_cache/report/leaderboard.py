"""The sweep's report: a leaderboard of every run and the robustness summary of the source study.

Robustness (Ilichev et al.): for each configuration (strategy, α, T), the worst / mean / best score
over seeds for each teacher subset, and over every subset of each size (seeds included), with a plot
of score against the number of teachers. Files: leaderboard.parquet, robustness.parquet,
leaderboard.md and robustness.png in the sweep directory.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mtkd_cache.atomic import write_atomically
from mtkd_cache.choices import Choice
from mtkd_cache.layout import LEADERBOARD, LEADERBOARD_MD, ROBUSTNESS, ROBUSTNESS_PLOT
from mtkd_cache.report.plots import plot_robustness
from mtkd_cache.report.quality import FLOOR, quality_markdown, quality_table

CONFIG = ["strategy", "alpha", "temperature"]


class Metric(Choice):
    """What a leaderboard ranks by (and robustness spreads): a column of every run's row."""

    ACCURACY = "accuracy"
    MACRO_F1 = "macro_f1"
    MCC = "mcc"

    @classmethod
    def parse(cls, value: object, flag: str = "--metric") -> Metric:
        return super().parse(value, flag)


METRICS = tuple(m.value for m in Metric)


@dataclass
class RunRow:
    """A leaderboard row: the run's grid point, its metrics and its times."""

    run: str
    strategy: str
    alpha: float
    temperature: float
    seed: int
    teachers: str
    num_teachers: int
    accuracy: float
    macro_f1: float
    mcc: float
    best_epoch: int
    train_seconds: float  # the training loop (epochs and per-epoch selection scoring)
    run_seconds: float  # the whole run: model set-up, training, final evaluation, report
    status: str  # "trained" in this invocation, or "skipped" (finished earlier)
    # The student and its size and speed (rows written before these fields existed read as unknown). The
    # full CPU frontier (ONNX size, batch 1 and 32, onnxruntime) is `report --frontier` over the sweep's runs.
    student: str = ""
    student_kind: str = ""
    parameters: int = 0
    ms_per_sample: float = float("nan")  # the run's evaluation pass, batched, on its device


def leaderboard_frame(rows: list[RunRow], metric: str) -> pl.DataFrame:
    frame = pl.DataFrame([dataclasses.asdict(r) for r in rows]) if rows else pl.DataFrame(
        schema={f.name: pl.Utf8 for f in dataclasses.fields(RunRow)})
    return frame.sort(metric, descending=True) if rows else frame


def _spread(frame: pl.DataFrame, by: list[str], metric: str) -> pl.DataFrame:
    score = pl.col(metric)
    return (frame.group_by(by, maintain_order=True)
            .agg(score.min().alias("worst"), score.mean().alias("mean"), score.max().alias("best"),
                 score.std().alias("std"), pl.col("teachers").n_unique().alias("subsets"), pl.len().alias("runs"))
            .sort(by))


def robustness_over_seeds(frame: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Per configuration and teacher subset: the spread of `metric` over seeds."""
    return _spread(frame, CONFIG + ["num_teachers", "teachers"], metric)


def robustness_over_subsets(frame: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Per configuration and subset size: the spread of `metric` over every subset of that size and every seed."""
    return _spread(frame, CONFIG + ["num_teachers"], metric)


def _markdown(frame: pl.DataFrame, float_columns: set[str]) -> list[str]:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.iter_rows():
        cells = ["–" if v is None else f"{v:.4f}" if c in float_columns else str(v) for c, v in zip(frame.columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    write_atomically(path, buffer.getvalue(), durable=False)


def write_leaderboard(out: Path, rows: list[RunRow], metric: str | Metric) -> pl.DataFrame:
    """leaderboard.parquet and leaderboard.md; with at least one row also robustness.parquet and robustness.png."""
    metric = Metric.parse(metric).value
    frame = leaderboard_frame(rows, metric)
    _write_parquet(frame, out / LEADERBOARD)
    if not rows:
        write_atomically(out / LEADERBOARD_MD, "# Sweep leaderboard\n\nNo run has finished yet.\n", durable=False)
        return frame
    over_subsets = robustness_over_subsets(frame, metric)
    _write_parquet(over_subsets, out / ROBUSTNESS)
    scores = {"worst", "mean", "best", "std", *METRICS}
    shown = frame.select("run", *METRICS, "best_epoch", "train_seconds", "run_seconds", "parameters", "ms_per_sample")
    lines = [f"# Sweep leaderboard (ranked by {metric})", ""]
    lines += _markdown(shown.with_columns(pl.col("train_seconds", "run_seconds").round(1).cast(pl.Utf8),
                                          pl.col("ms_per_sample").round(3).cast(pl.Utf8)), scores)
    lines += ["", f"## Robustness over seeds ({metric})", ""]
    lines += _markdown(robustness_over_seeds(frame, metric), scores)
    lines += ["", f"## Robustness over teacher subsets of each size ({metric}, seeds included)", ""]
    lines += _markdown(over_subsets, scores)
    lines += ["", f"![score against number of teachers]({ROBUSTNESS_PLOT})", ""]
    lines += ["", f"## Against the no-teacher floor and `average` ({metric}, paired by seed and teacher subset)", ""]
    if FLOOR in frame["strategy"].to_list():
        lines += quality_markdown(quality_table(frame, metric, CONFIG), metric) + [""]
    else:
        lines += ["Add `--strategy none` to the sweep for the floor and paired differences to it.", ""]
    write_atomically(out / LEADERBOARD_MD, "\n".join(lines), durable=False)
    plot_robustness(out / ROBUSTNESS_PLOT, over_subsets, metric, CONFIG)
    return frame

