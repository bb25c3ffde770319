"""`report`: runs side by side — accuracy, macro-F1, MCC, the median per-class difference to each teacher,
size and speed — as a table, comparison.md and comparison.png."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtkd_cache.atomic import write_atomically
from mtkd_cache.layout import COMPARISON_MD, COMPARISON_PLOT
from mtkd_cache.report.plots import plot_run_comparison
from mtkd_cache.report.run_report import RunReport, load_run_report


@dataclass
class Comparison:
    runs: list[str]  # run directory names, in the order given
    reports: list[RunReport]
    teachers: list[str]  # every teacher any run was compared with, sorted
    columns: list[str]
    rows: list[list[str]]  # one row of formatted cells per run, as comparison.md holds them
    written: tuple[Path, ...] = ()  # comparison.md and comparison.png, when an out directory was given

    def markdown(self) -> list[str]:
        return ["| " + " | ".join(self.columns) + " |", "|---" * len(self.columns) + "|",
                *("| " + " | ".join(cells) + " |" for cells in self.rows)]


def compare_runs(run_dirs: Sequence[Path], out: Path | None = None, appendix: Sequence[str] = ()) -> Comparison:
    """Compare finished runs; with `out`, write comparison.md (the table, then `appendix` lines such as the
    serve stage's ensemble table) and comparison.png."""
    reports = [load_run_report(run_dir) for run_dir in run_dirs]
    names = [run_dir.name for run_dir in run_dirs]
    teachers = sorted({t for r in reports for t in r.median_diff})
    columns = ["run", "strategy", "accuracy", "macro-F1", "MCC", *[f"median Δ {t}" for t in teachers], "params",
               "ms/sample"]
    rows = []
    for name, report in zip(names, reports):
        diffs = [report.median_diff.get(t) for t in teachers]
        rows.append([name, report.strategy, f"{report.accuracy:.4f}", f"{report.macro_f1:.4f}", f"{report.mcc:.4f}",
                     *["–" if d is None else f"{d:+.3f}" for d in diffs], f"{report.parameters:,}",
                     f"{report.ms_per_sample:.2f}"])
    comparison = Comparison(names, reports, teachers, columns, rows)
    if out is not None:
        lines = comparison.markdown() + ([""] + list(appendix) if appendix else [])
        write_atomically(out / COMPARISON_MD, "\n".join(lines) + "\n", durable=False)
        plot_run_comparison(out / COMPARISON_PLOT, names, [r.accuracy for r in reports], [r.macro_f1 for r in reports])
        comparison.written = (out / COMPARISON_MD, out / COMPARISON_PLOT)
    return comparison
