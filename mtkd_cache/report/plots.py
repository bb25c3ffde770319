"""The report stage's figures: per-class differences of a run, runs side by side, robustness of a sweep, and
the demo's per-class accuracy of every model.

Each figure is readable on its own: a title that says what it shows, labelled axes, a y-range fitted to the
values (students 2–5 points apart are invisible on a 0–1 axis), the legend outside the data, and no value
drawn as nothing — a zero difference gets a visible mark and a missing one says "n/a".

A `*_figure` function builds the figure (tests inspect it); the `plot_*` function beside it saves it.
Figures are drawn without pyplot (no global figure registry, about 4x faster to save, safe off the main
thread) and written atomically like every other report file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtkd_cache.atomic import write_atomically

ZERO_MARK = "D"  # the marker of a bar whose height is exactly 0
ROLE_HATCH = {"teacher": "", "student": "//", "floor": ".."}  # a model's role, told apart in black and white too


def new_axes(width: float, height: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    buffer = io.BytesIO()
    # "tight" keeps a legend placed outside the axes inside the saved image.
    figure.savefig(buffer, dpi=100, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    write_atomically(path, buffer.getvalue(), durable=False)


def score_limits(values: Sequence[float | None], ceiling: float = 1.0) -> tuple[float, float]:
    """A y-range for scores in [0, ceiling] that shows their differences: the values' span plus a margin."""
    known = [v for v in values if v is not None]
    if not known:
        return 0.0, ceiling
    low, high = min(known), max(known)
    margin = max(0.02, 0.15 * (high - low))
    return max(0.0, low - margin), min(ceiling + 0.005, high + margin)


def difference_limits(values: Sequence[float | None]) -> tuple[float, float]:
    """A y-range for differences that always includes 0 (the reference line) and every value, with a margin."""
    known = [v for v in values if v is not None] + [0.0]
    low, high = min(known), max(known)
    margin = max(0.01, 0.15 * (high - low))
    return low - margin, high + margin


def legend_outside(axis) -> None:
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _bars_with_marks(axis, positions, values: Sequence[float | None], width: float, **style) -> None:
    """Bars for known values; a marker on the axis for an exact zero; "n/a" where the value is missing."""
    heights = [0.0 if v is None else v for v in values]
    bars = axis.bar(positions, heights, width, **style)
    color = bars.patches[0].get_facecolor() if bars.patches else None
    for x, value in zip(positions, values):
        if value is None:
            # x in data, y in axes coordinates: at the bottom of the axes whatever its y-range.
            axis.text(x, 0.02, "n/a", transform=axis.get_xaxis_transform(), ha="center", va="bottom",
                      fontsize="small", color="dimgray")
        elif value == 0:
            axis.plot([x], [0], marker=ZERO_MARK, markersize=5, color=color, markeredgecolor="black", zorder=3)


def per_class_differences_figure(label_names: Sequence[str], per_class: dict[str, list], title: str):
    """Per class, the student's accuracy minus each teacher's (`per_class`: "student" and each teacher)."""
    student = per_class["student"]
    teachers = [name for name in per_class if name != "student"]
    width = 0.8 / max(1, len(teachers))
    figure, axis = new_axes(max(7, len(label_names) * 1.2 + 2), 4)
    differences = []
    for position, teacher in enumerate(teachers):
        diffs = [s - t if s is not None and t is not None else None for s, t in zip(student, per_class[teacher])]
        differences += diffs
        _bars_with_marks(axis, np.arange(len(label_names)) + position * width, diffs, width,
                         label=f"student − {teacher}")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_ylim(*difference_limits(differences))
    axis.set_xticks(np.arange(len(label_names)) + 0.4 - width / 2, label_names, rotation=30, ha="right")
    axis.set_xlabel("class")
    axis.set_ylabel("accuracy difference (student − teacher)")
    axis.set_title(title)
    if teachers:
        legend_outside(axis)
    return figure


def plot_per_class_differences(path: Path, label_names: Sequence[str], per_class: dict[str, list], title: str) -> None:
    save_figure(per_class_differences_figure(label_names, per_class, title), path)


def run_comparison_figure(names: Sequence[str], accuracy: Sequence[float], macro_f1: Sequence[float]):
    figure, axis = new_axes(max(7, len(names) * 1.1 + 2), 4)
    positions = np.arange(len(names))
    for offset, values, label in ((-0.2, accuracy, "accuracy"), (0.2, macro_f1, "macro-F1")):
        axis.bar_label(axis.bar(positions + offset, values, 0.4, label=label), fmt="%.3f", fontsize="x-small")
    axis.set_xticks(positions, names, rotation=30, ha="right")
    axis.set_ylim(*score_limits([*accuracy, *macro_f1]))
    axis.set_xlabel("run")
    axis.set_ylabel("score on the evaluation split")
    axis.set_title(f"{len(names)} runs compared: accuracy and macro-F1")
    legend_outside(axis)
    return figure


def plot_run_comparison(path: Path, names: Sequence[str], accuracy: Sequence[float], macro_f1: Sequence[float]) -> None:
    save_figure(run_comparison_figure(names, accuracy, macro_f1), path)


def robustness_figure(over_subsets, metric: str, config_columns: list[str]):
    """`over_subsets`: the polars frame of robustness_over_subsets (worst / mean / best per subset size)."""
    figure, axis = new_axes(9, 4)
    for (strategy, alpha, temperature), group in over_subsets.group_by(config_columns, maintain_order=True):
        group = group.sort("num_teachers")
        sizes = group["num_teachers"].to_list()
        line, = axis.plot(sizes, group["mean"].to_list(), marker="o", label=f"{strategy} α={alpha:g} T={temperature:g}")
        axis.fill_between(sizes, group["worst"].to_list(), group["best"].to_list(), color=line.get_color(), alpha=0.15)
    axis.set_ylim(*score_limits([*over_subsets["worst"].to_list(), *over_subsets["best"].to_list()]))
    axis.set_xlabel("number of teachers")
    axis.set_ylabel(f"{metric} (mean; band = worst to best)")
    axis.set_xticks(sorted(set(over_subsets["num_teachers"].to_list())))
    axis.set_title(f"Robustness: {metric} against the number of teachers, over subsets and seeds")
    legend_outside(axis)
    return figure


def plot_robustness(path: Path, over_subsets, metric: str, config_columns: list[str]) -> None:
    save_figure(robustness_figure(over_subsets, metric, config_columns), path)


def per_class_accuracy_figure(label_names: Sequence[str], models: Sequence[tuple[str, str, Sequence[float | None]]],
                              title: str):
    """Per class, every model's accuracy; `models` are (name, role, per-class accuracies); roles hatched apart."""
    width = 0.8 / max(1, len(models))
    figure, axis = new_axes(max(9, len(label_names) * 1.6 + 3), 4.5)
    for position, (name, role, per_class) in enumerate(models):
        _bars_with_marks(axis, np.arange(len(label_names)) + position * width, per_class, width,
                         label=f"{name} ({role})", hatch=ROLE_HATCH.get(role, "xx"))
    axis.set_xticks(np.arange(len(label_names)) + 0.4 - width / 2, label_names)
    axis.set_ylim(*score_limits([v for _, _, values in models for v in values]))
    axis.set_xlabel("class")
    axis.set_ylabel("per-class accuracy")
    axis.set_title(title)
    legend_outside(axis)
    return figure


def plot_per_class_accuracy(path: Path, label_names: Sequence[str],
                            models: Sequence[tuple[str, str, Sequence[float | None]]], title: str) -> None:
    save_figure(per_class_accuracy_figure(label_names, models, title), path)
