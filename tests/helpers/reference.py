"""Reference computations written independently of the package (metrics by their textbook formulas), and a
cache whose teachers are deleted after the build, for tests that must show a stage needs no teacher."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache

TEACHERS = ("bert", "distil")


def build_teacherless_cache(assets, root: Path) -> Path:
    """Copy both teachers, build a cache from the copies, then delete the copies: distill must need none."""
    copies = {name: shutil.copytree(assets[name], root / "teachers" / name) for name in TEACHERS}
    out = root / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])),
                            teachers=tuple(TeacherSpec(name, str(path)) for name, path in copies.items()),
                            out=out, shard_rows=16))
    shutil.rmtree(root / "teachers")
    assert not any(Path(p).exists() for p in copies.values())
    return out


def ref_confusion(labels, preds, num_labels):
    matrix = [[0] * num_labels for _ in range(num_labels)]
    for y, p in zip(labels, preds):
        if y >= 0:
            matrix[int(y)][int(p)] += 1
    return matrix


def ref_metrics(labels, preds, num_labels) -> dict:
    matrix = ref_confusion(labels, preds, num_labels)
    rows = [sum(r) for r in matrix]
    cols = [sum(matrix[i][k] for i in range(num_labels)) for k in range(num_labels)]
    total = sum(rows)
    accuracy = sum(matrix[k][k] for k in range(num_labels)) / total
    per_class = [matrix[k][k] / rows[k] if rows[k] else None for k in range(num_labels)]
    f1s = []
    for k in range(num_labels):
        if not rows[k] and not cols[k]:
            continue  # a class neither present nor predicted is not part of the macro average
        precision = matrix[k][k] / cols[k] if cols[k] else 0.0
        recall = matrix[k][k] / rows[k] if rows[k] else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    # MCC as the correlation of the one-hot true and predicted label matrices (Gorodkin's R_K, written as covariances).
    pairs = [(int(y), int(p)) for y, p in zip(labels, preds) if y >= 0]
    x_mean = [sum(y == k for y, _ in pairs) / total for k in range(num_labels)]
    y_mean = [sum(p == k for _, p in pairs) / total for k in range(num_labels)]

    def cov(a_of, a_mean, b_of, b_mean):
        return sum(((a_of(pair) == k) - a_mean[k]) * ((b_of(pair) == k) - b_mean[k])
                   for pair in pairs for k in range(num_labels))

    true_of, pred_of = (lambda pair: pair[0]), (lambda pair: pair[1])
    cov_xy = cov(true_of, x_mean, pred_of, y_mean)
    cov_xx = cov(true_of, x_mean, true_of, x_mean)
    cov_yy = cov(pred_of, y_mean, pred_of, y_mean)
    mcc = cov_xy / math.sqrt(cov_xx * cov_yy) if cov_xx > 0 and cov_yy > 0 else 0.0
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s), "mcc": mcc, "per_class": per_class,
            "confusion": matrix}
