"""`sweep`: a grid of distill runs from one loaded cache, with a leaderboard."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtkd_cache.distillation.configs import DistillConfig
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.sweep import SweepConfig, SweepGrid, load_sweep_file, run_sweep, sweep_config_from_options
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.layout import LEADERBOARD, LEADERBOARD_MD, ROBUSTNESS, ROBUSTNESS_PLOT
from mtkd_cache.report.leaderboard import RunRow, robustness_over_subsets

from .common import app, split_list, stdout, user_errors
from .options import Threads, from_config
from .progress import stderr


class _SweepProgress:
    """SweepEvents drawn with rich: one bar for the runs, one (reused) bar for the current epoch, a line per
    finished run."""

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

    def task(self, description: str, total: int) -> None:
        if self.epoch is None:
            self.epoch = self.progress.add_task(description, total=total)
        self.progress.reset(self.epoch, total=total, description=f"  {description}")

    def advance(self, rows: int) -> None:
        if self.epoch is not None:
            self.progress.advance(self.epoch, rows)

    def note(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/dim]")


def _as_for_distill(config_class: type, name: str, **options) -> typer.models.OptionInfo:
    """A sweep option left unset unless given (the sweep file may set it): its help is the config field's,
    and the default it stands for is shown beside it."""
    default = {f.name: f.default for f in dataclasses.fields(config_class)}[name]
    shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
    if default not in (None, ()):
        options.setdefault("show_default", f"{shown}")
    return from_config(config_class, name, **options)


@app.command()
@user_errors
def sweep(
    cache: Annotated[str | None, typer.Argument(help="Cache directory or the URL a cache was pushed to (or `cache` "
                                                    "in the sweep file).")] = None,
    student: Annotated[str | None, typer.Option(help="Student, as for distill.")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep directory: runs/, leaderboard.*, robustness.*.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML or YAML file with any of these options (flag names, "
                                                        "lists for the grid); flags given here override it.")] = None,
    strategy: Annotated[list[str] | None, _as_for_distill(SweepGrid, "strategies")] = None,
    alpha: Annotated[list[float] | None, _as_for_distill(SweepGrid, "alphas")] = None,
    temperature: Annotated[list[float] | None, _as_for_distill(SweepGrid, "temperatures")] = None,
    seed: Annotated[list[int] | None, _as_for_distill(SweepGrid, "seeds")] = None,
    teacher_subsets: Annotated[list[int] | None, _as_for_distill(SweepGrid, "subset_sizes")] = None,
    teachers: Annotated[str | None, typer.Option(help="Comma-separated teacher pool.", show_default="every teacher")] = None,
    max_minutes: Annotated[float | None, _as_for_distill(SweepConfig, "max_minutes")] = None,
    metric: Annotated[str | None, _as_for_distill(SweepConfig, "metric")] = None,
    parallel: Annotated[int | None, _as_for_distill(SweepConfig, "parallel")] = None,
    epochs: Annotated[int | None, _as_for_distill(TrainConfig, "epochs")] = None,
    batch_size: Annotated[int | None, _as_for_distill(TrainConfig, "batch_size")] = None,
    lr: Annotated[float | None, _as_for_distill(TrainConfig, "learning_rate")] = None,
    max_length: Annotated[int | None, _as_for_distill(TrainConfig, "max_length")] = None,
    device: Annotated[str | None, _as_for_distill(TrainConfig, "device")] = None,
    patience: Annotated[int | None, _as_for_distill(TrainConfig, "patience")] = None,
    warmup_epochs: Annotated[int | None, _as_for_distill(TrainConfig, "warmup_epochs")] = None,
    tokenizer: Annotated[str | None, _as_for_distill(DistillConfig, "tokenizer")] = None,
    train_split: Annotated[str | None, _as_for_distill(DistillConfig, "train_split")] = None,
    eval_split: Annotated[str | None, _as_for_distill(DistillConfig, "eval_split")] = None,
    selection_split: Annotated[str | None, _as_for_distill(DistillConfig, "selection_split")] = None,
    expert_split: Annotated[str | None, _as_for_distill(DistillConfig, "expert_split")] = None,
    noise_std: Annotated[float | None, _as_for_distill(StrategyConfig, "noise_std")] = None,
    gamma: Annotated[float | None, _as_for_distill(StrategyConfig, "gamma")] = None,
    unlabeled: Annotated[str | None, _as_for_distill(StrategyConfig, "unlabeled")] = None,
    correct_fallback: Annotated[str | None, _as_for_distill(StrategyConfig, "correct_fallback")] = None,
    expert_confidence: Annotated[float | None, _as_for_distill(StrategyConfig, "expert_confidence")] = None,
    calibrate: Annotated[bool | None, _as_for_distill(StrategyConfig, "calibrate")] = None,
    threads: Threads = None,  # or `threads = N` in the sweep file
) -> None:
    """Distil a grid of strategies × α × T × seeds × teacher subsets from one load of the cache; rank them.

    Re-running the same command skips finished runs and resumes an interrupted one.
    """
    flags = {k: v for k, v in locals().items() if k != "config" and v not in (None, [])}
    options = {**(load_sweep_file(config) if config is not None else {}), **flags}
    from mtkd_cache.cache.store import fetch, is_url
    from mtkd_cache.devices import set_threads

    set_threads(options.pop("threads", None))  # a process setting, not part of any run's identity
    if is_url(str(options.get("cache", ""))):  # the sweep reads every split of its teacher pool: fetched once
        pool = options.get("teachers")
        options["cache"] = fetch(str(options["cache"]), split_list(pool) if isinstance(pool, str) else pool, None).path
    sweep_config = sweep_config_from_options(options)
    events = _SweepProgress()
    with events.progress:
        result = run_sweep(sweep_config, events)
    if result.leaderboard is None:
        return  # under torchrun rank 0 reports the runs of every rank
    _print_leaderboard(result.leaderboard, sweep_config.metric.value)
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
    stdout.print(f"wrote {sweep_config.base.out / LEADERBOARD_MD}, {LEADERBOARD}"
                 + (f", {ROBUSTNESS} and {ROBUSTNESS_PLOT}" if result.rows else ""))


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
