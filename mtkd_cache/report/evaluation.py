"""Metrics and the thesis-style report (chapter 5 of the source thesis).

Overall accuracy, macro-F1 and MCC; per-class accuracy of the student beside every teacher; the median
over classes of the per-class difference student - teacher, for each teacher; the confusion matrix; how
often each teacher was followed and how often `expert` fell back to M. Nothing divides by zero: a class
with no sample has no accuracy (None in JSON) and is left out of medians; F1 of a class never predicted
and never present is left out of the macro average.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Metrics:
    accuracy: float
    macro_f1: float
    mcc: float
    per_class_accuracy: list[float | None]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class


def confusion(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    mask = labels >= 0
    return np.bincount(labels[mask] * num_labels + preds[mask], minlength=num_labels ** 2).reshape(num_labels, num_labels)


def compute_metrics(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> Metrics:
    matrix = confusion(preds, labels, num_labels).astype(np.float64)
    total = matrix.sum()
    correct = np.trace(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    per_class = [float(matrix[k, k] / support[k]) if support[k] else None for k in range(num_labels)]
    f1 = [2 * matrix[k, k] / (support[k] + predicted[k]) for k in range(num_labels) if support[k] + predicted[k]]
    # Multiclass MCC (Gorodkin, 2004): (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)).
    denominator = np.sqrt((total ** 2 - (predicted ** 2).sum()) * (total ** 2 - (support ** 2).sum()))
    mcc = float((correct * total - (predicted * support).sum()) / denominator) if denominator else 0.0
    return Metrics(accuracy=float(correct / total) if total else 0.0, macro_f1=float(np.mean(f1)) if f1 else 0.0,
                   mcc=mcc, per_class_accuracy=per_class, confusion_matrix=matrix.astype(int).tolist())


def macro_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    num_labels = int(max(preds.max(initial=0), labels.max(initial=0))) + 1
    return compute_metrics(preds, labels, num_labels).macro_f1


def median_difference(student: list[float | None], teacher: list[float | None]) -> float | None:
    differences = [s - t for s, t in zip(student, teacher) if s is not None and t is not None]
    return float(np.median(differences)) if differences else None


def per_class_table(label_names: tuple[str, ...], models: dict[str, list[float | None]]) -> list[str]:
    """Markdown rows: one line per class, one column per model, then the overall line."""
    header = "| class | " + " | ".join(models) + " |"
    lines = [header, "|" + "---|" * (len(models) + 1)]
    for k, name in enumerate(label_names):
        cells = [f"{values[k]:.3f}" if values[k] is not None else "–" for values in models.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_report(run_dir: Path, report: dict, label_names: tuple[str, ...]) -> None:
    """report.json (the documented keys), report.md (thesis-style tables) and per_class_diff.png."""
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    per_class = {name: [values[c] for c in label_names] for name, values in report["per_class_accuracy"].items()}
    lines = [f"# Distillation report — {report['config']['strategy']} → {report['config']['student']}", "",
             f"Evaluated on split `{report['eval_split']}` ({report['eval_rows']} rows); experts chosen on "
             f"`{report['expert_split']}`.", "",
             "| metric | student |", "|---|---|",
             f"| accuracy | {report['accuracy']:.4f} |", f"| macro-F1 | {report['macro_f1']:.4f} |",
             f"| MCC | {report['mcc']:.4f} |", "", "## Per-class accuracy", ""]
    lines += per_class_table(label_names, per_class)
    lines += ["", "## Median of per-class differences (student − teacher)", "", "| teacher | median diff |", "|---|---|"]
    lines += [f"| {t} | {d:+.4f} |" if d is not None else f"| {t} | – |" for t, d in report["median_diff"].items()]
    lines += ["", "## Who taught", "", "| teacher | followed (train rows) |", "|---|---|"]
    lines += [f"| {t} | {n} |" for t, n in report["followed"].items()]
    if report.get("fallbacks") is not None:
        lines += ["", f"`expert` fell back to M on {report['fallbacks']} rows."]
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    lines += ["", "![per-class differences](per_class_diff.png)", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    plot_per_class_differences(run_dir / "per_class_diff.png", label_names, per_class)


def new_axes(width: float, height: float):
    """A figure without pyplot: no global figure registry, about 4x faster to save, safe off the main thread."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)


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


def load_run_reports(run_dirs: list[Path]) -> list[dict]:
    from mtkd_cache.errors import ConfigError

    reports = []
    for run_dir in run_dirs:
        path = run_dir / "report.json"
        if not path.exists():
            raise ConfigError(f"{run_dir} has no report.json; is it a finished `distill` or `finetune` run?")
        reports.append({"run": run_dir.name, **json.loads(path.read_text())})
    return reports


def plot_run_comparison(path: Path, reports: list[dict]) -> None:
    names = [r["run"] for r in reports]
    figure, axis = new_axes(max(6, len(names) * 1.1), 4)
    positions = np.arange(len(names))
    axis.bar(positions - 0.2, [r["accuracy"] for r in reports], 0.4, label="accuracy")
    axis.bar(positions + 0.2, [r["macro_f1"] for r in reports], 0.4, label="macro-F1")
    axis.set_xticks(positions, names, rotation=30, ha="right")
    axis.set_ylim(0, 1)
    axis.legend(loc="lower right")
    save_figure(figure, path)
