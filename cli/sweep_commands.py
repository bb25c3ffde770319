"""`sweep`: a grid of distill runs from one loaded cache, with a leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtkd_cache import distributed
from mtkd_cache.distill.sweep import SweepEvents, load_sweep_file, run_sweep, sweep_config_from_options
from mtkd_cache.report.leaderboard import RunRow, robustness_over_subsets, write_leaderboard

from .common import app, stdout, user_errors
from .progress import stderr


class _SweepProgress(SweepEvents):
    """One bar for the runs, one (reused) bar for the current epoch; a line per finished run."""

    def __init__(self):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=stderr)
        self.runs = None
        self.epoch = None

    def run_started(self, index: int, total: int, name: str) -> None:
        if self.runs is None:
            self.runs = self.progress.add_task("runs", total=total)
        self.progress.update(self.runs, description=f"run {index + 1}/{total} {name}")

    def run_finished(self, row: RunRow) -> None:
        if self.runs is not None:
            self.progress.advance(self.runs)
        if row.status == "trained":
            self.progress.console.print(f"  {row.run}: accuracy {row.accuracy:.4f}  macro-F1 {row.macro_f1:.4f}  "
                                        f"({row.run_seconds:.1f} s)", highlight=False)

    def epoch_progress(self):
        def task(description: str, total: int) -> None:
            if self.epoch is None:
                self.epoch = self.progress.add_task(description, total=total)
            self.progress.reset(self.epoch, total=total, description=f"  {description}")

        return task, lambda rows: self.progress.advance(self.epoch, rows)


@app.command()
@user_errors
def sweep(
    cache: Annotated[Path | None, typer.Argument(help="Cache directory (or `cache` in the sweep file).")] = None,
    student: Annotated[str | None, typer.Option(help="Student, as for distill.")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep directory: runs/, leaderboard.*, robustness.*.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML or YAML file with any of these options (flag names, "
                                                        "lists for the grid); flags given here override it.")] = None,
    strategy: Annotated[list[str] | None, typer.Option(help="Strategy; repeat for several. [default: expert]")] = None,
    alpha: Annotated[list[float] | None, typer.Option(help="α; repeat for several. [default: 0.5]")] = None,
    temperature: Annotated[list[float] | None, typer.Option(help="T; repeat for several. [default: 2]")] = None,
    seed: Annotated[list[int] | None, typer.Option(help="Seed; repeat for several. [default: 0]")] = None,
    teacher_subsets: Annotated[list[int] | None, typer.Option(
        help="k: run every k-combination of the teacher pool; repeat for several k. [default: the whole pool]")] = None,
    teachers: Annotated[str | None, typer.Option(help="Comma-separated teacher pool. [default: every teacher]")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Start no new run after this many minutes.")] = None,
    metric: Annotated[str | None, typer.Option(help="accuracy, macro_f1 or mcc: what the leaderboard ranks by. "
                                                       "[default: accuracy]")] = None,
    epochs: Annotated[int | None, typer.Option(help="As for distill. [default: 3]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="As for distill. [default: 8]")] = None,
    lr: Annotated[float | None, typer.Option(help="As for distill. [default: 5e-5]")] = None,
    max_length: Annotated[int | None, typer.Option(help="As for distill. [default: 128]")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda. [default: auto]")] = None,
    patience: Annotated[int | None, typer.Option(help="As for distill.")] = None,
    warmup_epochs: Annotated[int | None, typer.Option(help="As for distill. [default: 0]")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="As for distill.")] = None,
    train_split: Annotated[str | None, typer.Option(help="As for distill. [default: train]")] = None,
    eval_split: Annotated[str | None, typer.Option(help="As for distill. [default: test]")] = None,
    selection_split: Annotated[str | None, typer.Option(help="As for distill. [default: validation]")] = None,
    expert_split: Annotated[str | None, typer.Option(help="As for distill. [default: test]")] = None,
    noise_std: Annotated[float | None, typer.Option(help="noisy: sigma. [default: 1.0]")] = None,
    gamma: Annotated[float | None, typer.Option(help="expert-soft: sharpening. [default: 2.0]")] = None,
) -> None:
    """Distil a grid of strategies × α × T × seeds × teacher subsets from one load of the cache; rank them.

    Re-running the same command skips finished runs and resumes an interrupted one.
    """
    flags = {k: v for k, v in locals().items() if k != "config" and v not in (None, [])}
    options = {**(load_sweep_file(config) if config is not None else {}), **flags}
    sweep_config = sweep_config_from_options(options)
    events = _SweepProgress()
    with events.progress:
        result = run_sweep(sweep_config, events)
    if not distributed.current().is_main:
        return  # under torchrun rank 0 writes the leaderboard of every rank's runs
    out_dir = sweep_config.base.out
    frame = write_leaderboard(out_dir, result.rows, sweep_config.metric)
    _print_leaderboard(frame, sweep_config.metric)
    trained = result.trained
    loop_seconds = sum(r.train_seconds for r in trained)
    skipped = len(result.rows) - len(trained)
    stdout.print(f"{len(trained)} run(s) trained, {skipped} finished earlier and skipped, of {result.planned} planned.")
    if trained:
        stdout.print(f"sweep {result.seconds:.1f} s; training loops {loop_seconds:.1f} s "
                     f"(sweep / loops = {result.seconds / max(loop_seconds, 1e-9):.2f})")
    if result.stopped_by_budget:
        stdout.print(f"[yellow]stopped: --max-minutes {sweep_config.max_minutes:g} reached; re-run the same command "
                     "to continue.[/yellow]")
    stdout.print(f"wrote {out_dir / 'leaderboard.md'}, leaderboard.parquet"
                 + (", robustness.parquet and robustness.png" if result.rows else ""))


def _print_leaderboard(frame, metric: str) -> None:
    if frame.is_empty():
        return
    shown = Table("#", "run", "accuracy", "macro-F1", "MCC", "train s", title=f"leaderboard (by {metric})")
    for rank, row in enumerate(frame.iter_rows(named=True), start=1):
        shown.add_row(str(rank), row["run"], f"{row['accuracy']:.4f}", f"{row['macro_f1']:.4f}", f"{row['mcc']:.4f}",
                      f"{row['train_seconds']:.1f}")
    stdout.print(shown)
    spread = robustness_over_subsets(frame, metric)
    robust = Table("strategy", "α", "T", "teachers", "worst", "mean", "best", "runs",
                   title=f"robustness over seeds and teacher subsets ({metric})")
    for row in spread.iter_rows(named=True):
        robust.add_row(row["strategy"], f"{row['alpha']:g}", f"{row['temperature']:g}", str(row["num_teachers"]),
                       f"{row['worst']:.4f}", f"{row['mean']:.4f}", f"{row['best']:.4f}", str(row["runs"]))
    stdout.print(robust)
