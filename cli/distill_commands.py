"""Commands after the cache: experts, select, distill, finetune, report. Each parses its options into the
library's configs (defaults and help come from the config fields), calls one library function, renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtkd_cache import DatasetSpec, open_cache
from mtkd_cache.distillation.configs import DistillConfig, FinetuneConfig, TransferStage
from mtkd_cache.distillation.experts import parse_teacher_subset
from mtkd_cache.distillation.runs import distill as run_distill
from mtkd_cache.distillation.runs import expert_table_for
from mtkd_cache.distillation.runs import finetune as run_finetune
from mtkd_cache.distillation.selection import select_teachers, write_selection
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.errors import ConfigError
from mtkd_cache.report.comparison import compare_runs
from mtkd_cache.serve.ensemble import EnsembleReport, evaluate_ensemble

from .common import app, split_list, stdout, user_errors
from .options import ConfigFile, field_help, from_config
from .progress import ProgressEvents, stderr

DEFAULT_STRATEGY = StrategyConfig.name.value


@app.command()
@user_errors
def experts(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")],
    split: Annotated[str, from_config(DistillConfig, "expert_split", "--split")] = DistillConfig.expert_split,
    teachers: Annotated[str | None, from_config(DistillConfig, "teachers")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigFile = None,
) -> None:
    """Per-class accuracy of every teacher, the expert of each class and the fallback teacher M."""
    opened = open_cache(cache)
    table = expert_table_for(opened, split, parse_teacher_subset(split_list(teachers), opened.teacher_names))
    if as_json:
        print(json.dumps(table.to_json(), indent=2))
        return
    shown = Table("class", *table.teachers, "expert", title=f"per-class accuracy on '{split}'")
    for k, name in enumerate(table.label_names):
        cells = ["–" if acc != acc else f"{acc:.3f}" for acc in table.per_class_accuracy[:, k]]
        shown.add_row(name, *cells, table.teachers[table.experts[k]])
    shown.add_row("overall", *[f"{acc:.3f}" for acc in table.overall_accuracy], f"M = {table.fallback_name}",
                  style="bold")
    stdout.print(shown)
    if split == "test":
        stderr.print("[yellow]note:[/yellow] experts chosen on test and a report on test leak test labels; "
                      "prefer --split validation.")


@app.command("select")
@user_errors
def select_command(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")],
    strategy: Annotated[str, typer.Option(help=field_help(StrategyConfig, "name"))],  # required here: no default
    out: Annotated[Path, typer.Option(help="Parquet file to write (sample_id, weights).")],
    split: Annotated[str, typer.Option(help="Split to select on.")] = DistillConfig.train_split,
    teachers: Annotated[str | None, from_config(DistillConfig, "teachers")] = None,
    expert_split: Annotated[str, from_config(DistillConfig, "expert_split")] = DistillConfig.expert_split,
    seed: Annotated[int, typer.Option(help="Seed of random/noisy draws.")] = TrainConfig.seed,
    noise_std: Annotated[float, from_config(StrategyConfig, "noise_std")] = StrategyConfig.noise_std,
    gamma: Annotated[float, from_config(StrategyConfig, "gamma")] = StrategyConfig.gamma,
    config: ConfigFile = None,
) -> None:
    """Write per-sample teacher weights of a strategy, and print who taught how often."""
    selection = select_teachers(cache, split, StrategyConfig(strategy, noise_std, gamma), split_list(teachers),
                                expert_split, seed, out)
    write_selection(out, selection)
    shown = Table("teacher", "followed (rows)", title=f"{selection.strategy} on '{split}'")
    for teacher, count in selection.followed.items():
        shown.add_row(teacher, f"{count:,}")
    stdout.print(shown)
    if selection.fallbacks is not None:
        stdout.print(f"fell back to M on {selection.fallbacks:,} of {len(selection.sample_ids):,} rows")
    stdout.print(f"wrote {out}")


def _print_result(result) -> None:
    report = result.report
    stdout.print(f"[bold]{result.run_dir}[/bold]: accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}"
                 f"  MCC {report.mcc:.4f}  (best epoch {result.train.best_epoch + 1}, "
                 f"{result.train.train_seconds:.1f} s training)")
    for warning in result.warnings:
        stderr.print(f"[yellow]warning:[/yellow] {warning}")


@app.command("distill")
@user_errors
def distill_command(
    cache: Annotated[Path, typer.Argument(help=field_help(DistillConfig, "cache"))],
    student: Annotated[str, from_config(DistillConfig, "student")],
    out: Annotated[Path, from_config(DistillConfig, "out")],
    strategy: Annotated[str, from_config(StrategyConfig, "name", "--strategy")] = DEFAULT_STRATEGY,
    alpha: Annotated[float, from_config(DistillConfig, "alpha")] = DistillConfig.alpha,
    temperature: Annotated[float, from_config(DistillConfig, "temperature")] = DistillConfig.temperature,
    epochs: Annotated[int, from_config(TrainConfig, "epochs")] = TrainConfig.epochs,
    teachers: Annotated[str | None, from_config(DistillConfig, "teachers")] = None,
    tokenizer: Annotated[str | None, from_config(DistillConfig, "tokenizer")] = None,
    batch_size: Annotated[int, from_config(TrainConfig, "batch_size")] = TrainConfig.batch_size,
    lr: Annotated[float, from_config(TrainConfig, "learning_rate", "--lr")] = TrainConfig.learning_rate,
    max_length: Annotated[int, from_config(TrainConfig, "max_length")] = TrainConfig.max_length,
    seed: Annotated[int, from_config(TrainConfig, "seed")] = TrainConfig.seed,
    device: Annotated[str, from_config(TrainConfig, "device")] = TrainConfig.device,
    patience: Annotated[int | None, from_config(TrainConfig, "patience")] = None,
    warmup_epochs: Annotated[int, from_config(TrainConfig, "warmup_epochs")] = TrainConfig.warmup_epochs,
    train_split: Annotated[str, from_config(DistillConfig, "train_split")] = DistillConfig.train_split,
    eval_split: Annotated[str, from_config(DistillConfig, "eval_split")] = DistillConfig.eval_split,
    selection_split: Annotated[str | None, from_config(DistillConfig, "selection_split")] = None,
    expert_split: Annotated[str, from_config(DistillConfig, "expert_split")] = DistillConfig.expert_split,
    noise_std: Annotated[float, from_config(StrategyConfig, "noise_std")] = StrategyConfig.noise_std,
    gamma: Annotated[float, from_config(StrategyConfig, "gamma")] = StrategyConfig.gamma,
    stage1_split: Annotated[str | None, typer.Option(help=field_help(TransferStage, "split"))] = None,
    stage1_epochs: Annotated[int, from_config(TransferStage, "epochs", "--stage1-epochs")] = TransferStage.epochs,
    stage1_strategy: Annotated[str | None, from_config(TransferStage, "strategy", "--stage1-strategy")] = None,
    config: ConfigFile = None,
) -> None:
    """Train a student from the cache alone with a selection strategy; write the student and the report."""
    stage1 = TransferStage(stage1_split, stage1_epochs, stage1_strategy) if stage1_split else None
    distill_config = DistillConfig(
        cache=cache, student=student, out=out, strategy=StrategyConfig(strategy, noise_std, gamma), alpha=alpha,
        temperature=temperature, teachers=split_list(teachers), tokenizer=tokenizer, train_split=train_split,
        eval_split=eval_split, selection_split=selection_split, expert_split=expert_split,
        train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, max_length=max_length, seed=seed,
                          device=device, patience=patience, warmup_epochs=warmup_epochs), stage1=stage1)
    with ProgressEvents() as events:
        result = run_distill(distill_config, events)
    _print_result(result)


@app.command("finetune")
@user_errors
def finetune_command(
    dataset: Annotated[str, typer.Option(help="Dataset source, as for build.")],
    model: Annotated[str, from_config(FinetuneConfig, "student", "--model")],
    out: Annotated[Path, from_config(FinetuneConfig, "out")],
    text_column: Annotated[str, from_config(DatasetSpec, "text_column")] = DatasetSpec.text_column,
    text_pair_column: Annotated[str | None, from_config(DatasetSpec, "text_pair_column")] = None,
    label_column: Annotated[str, from_config(DatasetSpec, "label_column")] = DatasetSpec.label_column,
    label_names: Annotated[str | None, from_config(DatasetSpec, "label_names")] = None,
    tokenizer: Annotated[str | None, from_config(FinetuneConfig, "tokenizer")] = None,
    epochs: Annotated[int, from_config(TrainConfig, "epochs")] = TrainConfig.epochs,
    batch_size: Annotated[int, from_config(TrainConfig, "batch_size")] = TrainConfig.batch_size,
    lr: Annotated[float, from_config(TrainConfig, "learning_rate", "--lr")] = TrainConfig.learning_rate,
    max_length: Annotated[int, from_config(TrainConfig, "max_length")] = TrainConfig.max_length,
    seed: Annotated[int, from_config(TrainConfig, "seed")] = TrainConfig.seed,
    device: Annotated[str, from_config(TrainConfig, "device")] = TrainConfig.device,
    patience: Annotated[int | None, from_config(TrainConfig, "patience")] = None,
    train_split: Annotated[str, from_config(FinetuneConfig, "train_split")] = FinetuneConfig.train_split,
    eval_split: Annotated[str, from_config(FinetuneConfig, "eval_split")] = FinetuneConfig.eval_split,
    config: ConfigFile = None,
) -> None:
    """Plain supervised fine-tuning (a teacher, or a student before distillation); no cache involved."""
    finetune_config = FinetuneConfig(
        dataset=DatasetSpec(source=dataset, text_column=text_column, text_pair_column=text_pair_column,
                            label_column=label_column, label_names=split_list(label_names)),
        student=model, out=out, tokenizer=tokenizer, train_split=train_split, eval_split=eval_split,
        train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, max_length=max_length, seed=seed,
                          device=device, patience=patience))
    with ProgressEvents() as events:
        result = run_finetune(finetune_config, events)
    _print_result(result)


@app.command()
@user_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories written by distill or finetune.")],
    out: Annotated[Path | None, typer.Option(help="Directory for comparison.md and comparison.png.")] = None,
    ensemble: Annotated[bool, typer.Option(help="Also score a majority-vote and a mean-probability ensemble of the "
                                                "runs' students (distill runs of one cache).")] = False,
    split: Annotated[str | None, typer.Option(help="--ensemble: split to score on; default the runs' eval split.")] = None,
    cache: Annotated[Path | None, typer.Option(help="--ensemble: cache to score on; default the first run's.")] = None,
    device: Annotated[str, typer.Option(help="--ensemble: auto, cpu or cuda.")] = TrainConfig.device,
    frontier: Annotated[bool, typer.Option(help="Also measure every run's student and the cache's teachers "
                                                "(parameters, ONNX size, CPU ms/sample at batch 1 and 32, torch and "
                                                "onnxruntime) and write frontier.md/.json/.png to --out.")] = False,
    config: ConfigFile = None,
) -> None:
    """Compare runs side by side: accuracy, macro-F1, MCC, median per-class difference to each teacher."""
    if frontier and out is None:
        raise ConfigError("--frontier writes frontier.md, frontier.json and frontier.png; give --out DIRECTORY.")
    scored = evaluate_ensemble(runs, split, cache, device) if ensemble else None
    comparison = compare_runs(runs, out, appendix=scored.markdown() if scored else ())
    shown = Table(*comparison.columns)
    for cells in comparison.rows:
        shown.add_row(*cells)
    stdout.print(shown)
    if scored is not None:
        _print_ensemble(scored)
    if comparison.written:
        stdout.print(f"wrote {' and '.join(str(path) for path in comparison.written)}")
    if frontier:
        _report_frontier(runs, out)


def _report_frontier(runs: list[Path], out: Path) -> None:
    import os

    from mtkd_cache.report.frontier import frontier_markdown, write_frontier
    from mtkd_cache.serve.speed import frontier_points

    points = frontier_points(runs)
    load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    written = write_frontier(out, points, f"CPU timings measured with {load} (1, 5, 15 min).")
    for line in frontier_markdown(points):
        stdout.print(line, soft_wrap=True)
    stdout.print(f"{load}; wrote {', '.join(str(p) for p in written)}")


def _print_ensemble(result: EnsembleReport) -> None:
    shown = Table("model", "accuracy", "macro-F1", "MCC", title=f"ensemble of {len(result.members)} students on "
                  f"'{result.split}' ({result.rows} rows)")
    for name, cells in result.table_rows():
        shown.add_row(name, *cells, style="bold" if name.startswith("ensemble") else None)
    stdout.print(shown)
