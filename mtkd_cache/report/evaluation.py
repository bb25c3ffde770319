"""Metrics of the thesis-style report (chapter 5 of the source thesis); run_report.py writes the report.

Overall accuracy, macro-F1 and MCC; per-class accuracy of the student beside every teacher; the median
over classes of the per-class difference student - teacher, for each teacher; the confusion matrix; how
often each teacher was followed and how often `expert` fell back to M. Nothing divides by zero: a class
with no sample has no accuracy (None in JSON) and is left out of medians; F1 of a class never predicted
and never present is left out of the macro average.
"""

from __future__ import annotations

from dataclasses import dataclass

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
