"""The size / speed / accuracy frontier: one row per model (teacher, distilled student, no-teacher floor) with
its accuracy, parameters, file size and CPU speed, as a table and as accuracy against CPU throughput (log x).

The speed figures are measured by the serve stage (serve/speed.py), which can export and run the models;
this module only shapes and draws them, so a sweep or the demo can reuse it on numbers they already hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtkd_cache.atomic import write_atomically
from mtkd_cache.choices import Choice
from mtkd_cache.layout import FRONTIER_JSON, FRONTIER_MD, FRONTIER_PLOT
from mtkd_cache.report.plots import new_axes, save_figure


class Role(Choice):
    TEACHER = "teacher"
    STUDENT = "student"  # distilled from the cache
    FLOOR = "floor"  # the same student trained on gold labels alone (`finetune`): what distillation must beat


@dataclass(frozen=True)
class FrontierPoint:
    name: str
    role: Role
    kind: str  # "hf", "bilstm", "static", or "teacher"
    accuracy: float
    parameters: int
    file_bytes: int  # the fp32 ONNX export
    torch_ms: dict[int, float]  # batch size -> CPU ms per sample
    onnx_ms: dict[int, float]

    @property
    def samples_per_second(self) -> float:
        """CPU throughput at batch 32 with onnxruntime, the way the model would be served."""
        return 1000 / self.onnx_ms[32] if self.onnx_ms.get(32) else math.nan

    def row(self) -> dict:
        """Flat fields, as a leaderboard row or JSON holds them."""
        return {"model": self.name, "role": self.role.value, "kind": self.kind, "accuracy": self.accuracy,
                "parameters": self.parameters, "file_mb": self.file_bytes / 1e6,
                **{f"torch_ms_b{b}": ms for b, ms in sorted(self.torch_ms.items())},
                **{f"onnx_ms_b{b}": ms for b, ms in sorted(self.onnx_ms.items())},
                "samples_per_s": self.samples_per_second}


def frontier_markdown(points: Sequence[FrontierPoint]) -> list[str]:
    """The frontier table, fastest first, with each model's throughput relative to the best teacher's."""
    teachers = [p for p in points if p.role is Role.TEACHER]
    best = max(teachers, key=lambda p: p.accuracy) if teachers else None
    columns = ["model", "role", "kind", "accuracy", "params", "ONNX MB", "torch ms b1", "torch ms b32", "ORT ms b1",
               "ORT ms b32", "samples/s"] + ([f"× {best.name}"] if best else [])
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for p in sorted(points, key=lambda p: -p.samples_per_second):
        cells = [p.name, p.role.value, p.kind, f"{p.accuracy:.4f}", f"{p.parameters:,}", f"{p.file_bytes / 1e6:.1f}",
                 *(f"{ms.get(b, math.nan):.2f}" for ms in (p.torch_ms, p.onnx_ms) for b in (1, 32)),
                 f"{p.samples_per_second:.0f}"]
        if best:
            cells.append(f"{p.samples_per_second / best.samples_per_second:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


_STYLE = {Role.TEACHER: ("s", "tab:red"), Role.STUDENT: ("o", "tab:blue"), Role.FLOOR: ("x", "tab:gray")}


def plot_frontier(path, points: Sequence[FrontierPoint], title: str = "accuracy against CPU throughput") -> None:
    """Accuracy against samples/s (log x): teachers, distilled students and no-teacher floors, each labelled."""
    figure, axis = new_axes(8, 5)
    for role in Role:
        chosen = [p for p in points if p.role is role]
        if chosen:
            marker, color = _STYLE[role]
            axis.scatter([p.samples_per_second for p in chosen], [p.accuracy for p in chosen], marker=marker,
                         color=color, label=role.value, s=50)
            for p in chosen:
                axis.annotate(p.name, (p.samples_per_second, p.accuracy), fontsize="x-small",
                              xytext=(4, 3), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("CPU throughput, samples/s (onnxruntime, batch 32; log scale)")
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize="small")
    save_figure(figure, path)


def write_frontier(out: Path, points: Sequence[FrontierPoint], context: str = "") -> tuple[Path, ...]:
    """frontier.md (the table, then `context`, e.g. the load average), frontier.json (the rows), frontier.png."""
    lines = ["# Size / speed / accuracy frontier", "", *frontier_markdown(points)] + (["", context] if context else [])
    write_atomically(out / FRONTIER_MD, "\n".join(lines) + "\n", durable=False)
    write_atomically(out / FRONTIER_JSON, json.dumps([p.row() for p in points], indent=1), durable=False)
    plot_frontier(out / FRONTIER_PLOT, points)
    return out / FRONTIER_MD, out / FRONTIER_JSON, out / FRONTIER_PLOT
