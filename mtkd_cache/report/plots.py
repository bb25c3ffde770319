"""The report stage's figures: per-class differences of a run, runs side by side, robustness of a sweep.

Figures are drawn without pyplot (no global figure registry, about 4x faster to save, safe off the main
thread) and written atomically like every other report file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mtkd_cache.atomic import write_atomically


def new_axes(width: float, height: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=100, format=path.suffix.lstrip(".") or "png")
    write_atomically(path, buffer.getvalue(), durable=False)


def plot_per_class_differences(path: Path, label_names: tuple[str, ...], per_class: dict[str, list]) -> None:
    student = per_class["student"]
    teachers = [name for name in per_class if name != "student"]
    width = 0.8 / max(1, len(teachers))
    figure, axis = new_axes(max(6, len(label_names) * 1.2), 4)
    for position, teacher in enumerate(teachers):
        diffs = [(s - t) if s is not None and t is not None else 0.0 for s, t in zip(student, per_class[teacher])]
        axis.bar(np.arange(len(label_names)) + position * width, diffs, width, label=f"student − {teacher}")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(np.arange(len(label_names)) + 0.4 - width / 2, label_names, rotation=30, ha="right")
    axis.set_ylabel("per-class accuracy difference")
    axis.legend(fontsize="small", loc="lower right")  # a fixed place: searching for the "best" one is slow
    save_figure(figure, path)


def plot_run_comparison(path: Path, names: list[str], accuracy: list[float], macro_f1: list[float]) -> None:
    figure, axis = new_axes(max(6, len(names) * 1.1), 4)
    positions = np.arange(len(names))
    axis.bar(positions - 0.2, accuracy, 0.4, label="accuracy")
    axis.bar(positions + 0.2, macro_f1, 0.4, label="macro-F1")
    axis.set_xticks(positions, names, rotation=30, ha="right")
    axis.set_ylim(0, 1)
    axis.legend(loc="lower right")
    save_figure(figure, path)


def plot_robustness(path: Path, over_subsets, metric: str, config_columns: list[str]) -> None:
    """`over_subsets`: the polars frame of robustness_over_subsets (worst / mean / best per subset size)."""
    figure, axis = new_axes(7, 4)
    for (strategy, alpha, temperature), group in over_subsets.group_by(config_columns, maintain_order=True):
        group = group.sort("num_teachers")
        sizes = group["num_teachers"].to_list()
        line, = axis.plot(sizes, group["mean"].to_list(), marker="o", label=f"{strategy} α={alpha:g} T={temperature:g}")
        axis.fill_between(sizes, group["worst"].to_list(), group["best"].to_list(), color=line.get_color(), alpha=0.15)
    axis.set_xlabel("number of teachers")
    axis.set_ylabel(f"{metric} (mean; band = worst to best)")
    axis.set_xticks(sorted(set(over_subsets["num_teachers"].to_list())))
    axis.legend(fontsize="small", loc="lower right")
    save_figure(figure, path)
