"""Commands after the cache: experts, select, distill, finetune, report. Each parses its options into the
library's configs (defaults and help come from the config fields), calls one library function, renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mtkd_cache import DatasetSpec, open_cache
from mtkd_cache.cache.store import fetch
from mtkd_cache.distillation.configs import DistillConfig, FinetuneConfig, TransferStage
from mtkd_cache.distillation.experts import expert_table_for, parse_teacher_subset
from mtkd_cache.distillation.strategy_config import StrategyConfig
from mtkd_cache.distillation.train_config import TrainConfig
from mtkd_cache.errors import ConfigError

# torch-free above this line (`experts` must start without it, tests/cli/test_startup.py); the training,
# selection and ensemble stages are imported inside the commands that run them.
if TYPE_CHECKING:
    from mtkd_cache.serve.ensemble import EnsembleReport

from .common import app, split_list, stdout, user_errors
from .options import ConfigFile, Threads, field_help, from_config
from .progress import ProgressEvents, stderr

DEFAULT_STRATEGY = StrategyConfig.name.value
CACHE_OR_URL = "Cache directory, or the URL a cache was pushed to (what is read is fetched once into the local store)."


@app.command()
@user_errors
def experts(
    cache: Annotated[str, typer.Argument(help=CACHE_OR_URL)],
    split: Annotated[str, from_config(DistillConfig, "expert_split", "--split")] = DistillConfig.expert_split,
    teachers: Annotated[str | None, from_config(DistillConfig, "teachers")] = None,
    expert_confidence: Annotated[float | None, from_config(StrategyConfig, "expert_confidence")] = None,
    calibrate: Annotated[bool, typer.Option(help="Also fit and show each teacher's temperature on the split.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigFile = None,
) -> None:
    """Per-class accuracy of every teacher (with its 95% credible interval), the expert of each class and the
    fallback teacher M."""
    with ProgressEvents() as events:
        opened = open_cache(fetch(cache, split_list(teachers), (split,), events).path)
    strategy = StrategyConfig(expert_confidence=expert_confidence, calibrate=calibrate)
    table = expert_table_for(opened, split, parse_teacher_subset(split_list(teachers), opened.teacher_names),
                             strategy=strategy)
    low, high = table.credible_intervals()
    if as_json:
        intervals = {t: {c: None if low[n, k] != low[n, k] else [float(low[n, k]), float(high[n, k])]
                         for k, c in enumerate(table.label_names)} for n, t in enumerate(table.teachers)}
        print(json.dumps({**table.to_json(), "credible_intervals_95": intervals}, indent=2))
        return
    shown = Table("class", *table.teachers, "expert", title=f"per-class accuracy on '{split}' [95% credible interval]")
    for k, name in enumerate(table.label_names):
        cells = ["–" if acc != acc else f"{acc:.3f} [{low[n, k]:.2f}, {high[n, k]:.2f}]"
                 for n, acc in enumerate(table.per_class_accuracy[:, k])]
        shown.add_row(name, *cells, table.teachers[table.experts[k]])
    shown.add_row("overall", *[f"{acc:.3f}" for acc in table.overall_accuracy], f"M = {table.fallback_name}",
                  style="bold")
    if table.temperatures is not None:
        shown.add_row("temperature", *[f"{t:.2f}" for t in table.temperatures], "")
    stdout.print(shown)
    if table.confidence is not None:
        stdout.print(f"experts kept only where better than M with posterior probability ≥ {table.confidence:g}")
    if split == "test":
        stderr.print("[yellow]note:[/yellow] experts chosen on test and a report on test leak test labels; "
                      "prefer --split validation.")


@app.command("select")
@user_errors
def select_command(
    cache: Annotated[str, typer.Argument(help=CACHE_OR_URL)],
    strategy: Annotated[str, typer.Option(help=field_help(StrategyConfig, "name"))],  # required here: no default
    out: Annotated[Path, typer.Option(help="Parquet file to write (sample_id, weights).")],
    split: Annotated[str, typer.Option(help="Split to select on.")] = DistillConfig.train_split,
    teachers: Annotated[str | None, from_config(DistillConfig, "teachers")] = None,
    expert_split: Annotated[str, from_config(DistillConfig, "expert_split")] = DistillConfig.expert_split,
    seed: Annotated[int, typer.Option(help="Seed of random/noisy draws.")] = TrainConfig.seed,
    noise_std: Annotated[float, from_config(StrategyConfig, "noise_std")] = StrategyConfig.noise_std,
    gamma: Annotated[float, from_config(StrategyConfig, "gamma")] = StrategyConfig.gamma,
    unlabeled: Annotated[str, from_config(StrategyConfig, "unlabeled", metavar="[thesis|claim-accuracy]")] = StrategyConfig.unlabeled.value,
    correct_fallback: Annotated[str, from_config(StrategyConfig, "correct_fallback", metavar="[best|gold]")] = StrategyConfig.correct_fallback.value,
    expert_confidence: Annotated[float | None, from_config(StrategyConfig, "expert_confidence")] = None,
    calibrate: Annotated[bool, from_config(StrategyConfig, "calibrate")] = StrategyConfig.calibrate,
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """Write per-sample teacher weights of a strategy, and print who taught how often."""
    from mtkd_cache.distillation.selection import select_teachers, write_selection

    with ProgressEvents() as events:
        local = fetch(cache, split_list(teachers), (split, expert_split), events).path
    selection = select_teachers(local, split, StrategyConfig(strategy, noise_std, gamma, unlabeled, correct_fallback,
                                                             expert_confidence, calibrate), split_list(teachers),
                                expert_split, seed, out)
    write_selection(out, selection)
    if selection.followed is not None:
        shown = Table("teacher", "followed (rows)", "mean weight", title=f"{selection.strategy} on '{split}'")
        for teacher, count in selection.followed.items():
            shown.add_row(teacher, f"{count:,}", f"{selection.mean_weight[teacher]:.3f}")
    else:  # a mixture: the argmax of its weights says nothing about who taught
        shown = Table("teacher", "mean weight", title=f"{selection.strategy} on '{split}'")
        for teacher, weight in selection.mean_weight.items():
            shown.add_row(teacher, f"{weight:.3f}")
    stdout.print(shown)
    if selection.fallbacks is not None:
        stdout.print(f"fell back to M on {selection.fallbacks:,} of {len(selection.sample_ids):,} rows")
    stdout.print(f"wrote {out}")


def _print_result(result) -> None:
    report = result.report
    stdout.print(f"[bold]{result.run_dir}[/bold]: accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}"
                 f"  MCC {report.mcc:.4f}  (best epoch {report.best_epoch}, "
                 f"{result.train.train_seconds:.1f} s training)")
    # result.warnings were shown before training (progress notes), when they can still save a run


@app.command("distill")
@user_errors
def distill_command(
    cache: Annotated[str, typer.Argument(help=field_help(DistillConfig, "cache"))],
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
    unlabeled: Annotated[str, from_config(StrategyConfig, "unlabeled", metavar="[thesis|claim-accuracy]")] = StrategyConfig.unlabeled.value,
    correct_fallback: Annotated[str, from_config(StrategyConfig, "correct_fallback", metavar="[best|gold]")] = StrategyConfig.correct_fallback.value,
    expert_confidence: Annotated[float | None, from_config(StrategyConfig, "expert_confidence")] = None,
    calibrate: Annotated[bool, from_config(StrategyConfig, "calibrate")] = StrategyConfig.calibrate,
    stage1_split: Annotated[str | None, typer.Option(help=field_help(TransferStage, "split"))] = None,
    stage1_epochs: Annotated[int, from_config(TransferStage, "epochs", "--stage1-epochs")] = TransferStage.epochs,
    stage1_strategy: Annotated[str | None, from_config(TransferStage, "strategy", "--stage1-strategy")] = None,
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """Train a student from the cache alone with a selection strategy; write the student and the report."""
    stage1 = TransferStage(stage1_split, stage1_epochs, stage1_strategy) if stage1_split else None
    distill_config = DistillConfig(
        cache=cache, student=student, out=out, strategy=StrategyConfig(strategy, noise_std, gamma, unlabeled, correct_fallback, expert_confidence, calibrate), alpha=alpha,
        temperature=temperature, teachers=split_list(teachers), tokenizer=tokenizer, train_split=train_split,
        eval_split=eval_split, selection_split=selection_split, expert_split=expert_split,
        train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, max_length=max_length, seed=seed,
                          device=device, patience=patience, warmup_epochs=warmup_epochs), stage1=stage1)
    from mtkd_cache.distillation.runs import distill as run_distill

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
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """Plain supervised fine-tuning (a teacher, or a student before distillation); no cache involved."""
    finetune_config = FinetuneConfig(
        dataset=DatasetSpec(source=dataset, text_column=text_column, text_pair_column=text_pair_column,
                            label_column=label_column, label_names=split_list(label_names)),
        student=model, out=out, tokenizer=tokenizer, train_split=train_split, eval_split=eval_split,
        train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, max_length=max_length, seed=seed,
                          device=device, patience=patience))
    from mtkd_cache.distillation.runs import finetune as run_finetune

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
    cache: Annotated[str | None, typer.Option(help="--ensemble: cache (directory or URL) to score on; default the "
                                                   "first run's.")] = None,
    device: Annotated[str, typer.Option(help="--ensemble: auto, cpu or cuda.")] = TrainConfig.device,
    frontier: Annotated[bool, typer.Option(help="Also measure every run's student and the cache's teachers "
                                                "(parameters, ONNX size, CPU ms/sample at batch 1 and 32, torch and "
                                                "onnxruntime) and write frontier.md/.json/.png to --out.")] = False,
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """Compare runs side by side: accuracy, macro-F1, MCC, median per-class difference to each teacher."""
    if frontier and out is None:
        raise ConfigError("--frontier writes frontier.md, frontier.json and frontier.png; give --out DIRECTORY.")
    from mtkd_cache.report.comparison import compare_runs
    from mtkd_cache.serve.ensemble import evaluate_ensemble

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
