"""Commands after the cache: experts, select, distill, finetune, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtkd_cache import DatasetSpec, open_cache
from mtkd_cache.distill.experts import parse_teacher_subset
from mtkd_cache.distill.runs import (
    DistillConfig,
    FinetuneConfig,
    TransferStage,
    expert_table_for,
    select_teachers,
    write_selection,
)
from mtkd_cache.distill.runs import distill as run_distill
from mtkd_cache.distill.runs import finetune as run_finetune
from mtkd_cache.distill.strategies import STRATEGIES, StrategyConfig
from mtkd_cache.distill.training import TrainConfig
from mtkd_cache.report.evaluation import load_run_reports, plot_run_comparison
from mtkd_cache.serve.ensemble import evaluate_ensemble

from .common import app, split_list, stdout, user_errors
from .progress import ProgressEvents, stderr

STRATEGY_HELP = f"One of {', '.join(STRATEGIES)}."


@app.command()
@user_errors
def experts(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")],
    split: Annotated[str, typer.Option(help="Split whose labels pick the experts (the thesis used test; validation avoids a leak).")] = "test",
    teachers: Annotated[str | None, typer.Option(help="Comma-separated teacher subset; default every teacher.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Per-class accuracy of every teacher, the expert of each class and the fallback teacher M."""
    opened = open_cache(cache)
    table = expert_table_for(opened, split, parse_teacher_subset(teachers, opened.teacher_names))
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
    strategy: Annotated[str, typer.Option(help=STRATEGY_HELP)],
    out: Annotated[Path, typer.Option(help="Parquet file to write (sample_id, weights).")],
    split: Annotated[str, typer.Option(help="Split to select on.")] = "train",
    teachers: Annotated[str | None, typer.Option(help="Comma-separated teacher subset.")] = None,
    expert_split: Annotated[str, typer.Option(help="Split the expert table comes from.")] = "test",
    seed: Annotated[int, typer.Option(help="Seed of random/noisy draws.")] = 0,
    noise_std: Annotated[float, typer.Option(help="noisy: sigma of the logit noise.")] = 1.0,
    gamma: Annotated[float, typer.Option(help="expert-soft: sharpening exponent.")] = 2.0,
) -> None:
    """Write per-sample teacher weights of a strategy, and print who taught how often."""
    selection = select_teachers(cache, split, StrategyConfig(strategy, noise_std, gamma), teachers, expert_split, seed)
    write_selection(out, selection)
    shown = Table("teacher", "followed (rows)", title=f"{strategy} on '{split}'")
    for teacher, count in selection.followed.items():
        shown.add_row(teacher, f"{count:,}")
    stdout.print(shown)
    if selection.fallbacks is not None:
        stdout.print(f"fell back to M on {selection.fallbacks:,} of {len(selection.sample_ids):,} rows")
    stdout.print(f"wrote {out}")


def _train_config(epochs, batch_size, lr, max_length, seed, device, patience, warmup_epochs) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=lr, max_length=max_length, seed=seed,
                       device=device, patience=patience, warmup_epochs=warmup_epochs)


def _print_result(result) -> None:
    report = result.report
    stdout.print(f"[bold]{result.run_dir}[/bold]: accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}"
                 f"  MCC {report['mcc']:.4f}  (best epoch {result.train.best_epoch + 1}, "
                 f"{result.train.train_seconds:.1f} s training)")
    for warning in result.warnings:
        stderr.print(f"[yellow]warning:[/yellow] {warning}")


@app.command("distill")
@user_errors
def distill_command(
    cache: Annotated[Path, typer.Argument(help="Cache directory (the only input: no teacher is loaded).")],
    student: Annotated[str, typer.Option(help="A checkpoint directory or hub id, bert[:layers=4,hidden=256,heads=4], bilstm[:embed=128,hidden=256], or a config .json.")],
    out: Annotated[Path, typer.Option(help="Run directory (resumed if it holds the same run).")],
    strategy: Annotated[str, typer.Option(help=STRATEGY_HELP)] = "expert",
    alpha: Annotated[float, typer.Option(help="Weight of the cross-entropy term; 1 - alpha weighs the KD term.")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Softmax temperature T of the KD term (scaled by T²).")] = 2.0,
    epochs: Annotated[int, typer.Option(help="Training epochs, warm-up epochs included.")] = 3,
    teachers: Annotated[str | None, typer.Option(help="Comma-separated teacher subset.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer for students built from scratch.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per optimizer step.")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 5e-5,
    max_length: Annotated[int, typer.Option(help="Student tokens per text.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed: on CPU a run is reproducible bit for bit.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    patience: Annotated[int | None, typer.Option(help="Stop after this many epochs without a better selection score.")] = None,
    warmup_epochs: Annotated[int, typer.Option(help="Plain fine-tuning epochs before distillation.")] = 0,
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    eval_split: Annotated[str, typer.Option(help="Split the report evaluates on.")] = "test",
    selection_split: Annotated[str | None, typer.Option(help="Split that picks the best epoch; default validation.")] = None,
    expert_split: Annotated[str, typer.Option(help="Split the expert table comes from.")] = "test",
    noise_std: Annotated[float, typer.Option(help="noisy: sigma of the logit noise.")] = 1.0,
    gamma: Annotated[float, typer.Option(help="expert-soft: sharpening exponent.")] = 2.0,
    stage1_split: Annotated[str | None, typer.Option(help="Two-stage schedule (TMKD): distil on this split "
                                                        "first (e.g. an unlabeled transfer split: KD term only).")] = None,
    stage1_epochs: Annotated[int, typer.Option(help="Epochs of stage 1.")] = 1,
    stage1_strategy: Annotated[str | None, typer.Option(help="Strategy of stage 1; default --strategy.")] = None,
) -> None:
    """Train a student from the cache alone with a selection strategy; write the student and the report."""
    stage1 = TransferStage(stage1_split, stage1_epochs, stage1_strategy) if stage1_split else None
    config = DistillConfig(
        cache=cache, student=student, out=out, strategy=StrategyConfig(strategy, noise_std, gamma), alpha=alpha,
        temperature=temperature, teachers=teachers, tokenizer=tokenizer, train_split=train_split,
        eval_split=eval_split, selection_split=selection_split, expert_split=expert_split,
        train=_train_config(epochs, batch_size, lr, max_length, seed, device, patience, warmup_epochs), stage1=stage1)
    with ProgressEvents() as events:
        result = run_distill(config, events.task, events.advance)
    _print_result(result)


@app.command("finetune")
@user_errors
def finetune_command(
    dataset: Annotated[str, typer.Option(help="Dataset source, as for build.")],
    model: Annotated[str, typer.Option(help="Model to fine-tune: a checkpoint directory or hub id, or a student spec.")],
    out: Annotated[Path, typer.Option(help="Run directory; the fine-tuned model lands in OUT/student.")],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    text_pair_column: Annotated[str | None, typer.Option(help="Second text column (sentence pairs).")] = None,
    label_column: Annotated[str, typer.Option(help="Column holding the label.")] = "label",
    label_names: Annotated[str | None, typer.Option(help="Comma-separated label names in class-id order.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer for models built from scratch.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (the source study used 3).")] = 3,
    batch_size: Annotated[int, typer.Option(help="Rows per step (the source study used 8).")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (the source study used 5e-5).")] = 5e-5,
    max_length: Annotated[int, typer.Option(help="Tokens per text.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs.")] = None,
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    eval_split: Annotated[str, typer.Option(help="Split to report on.")] = "test",
) -> None:
    """Plain supervised fine-tuning (a teacher, or a student before distillation); no cache involved."""
    config = FinetuneConfig(
        dataset=DatasetSpec(source=dataset, text_column=text_column, text_pair_column=text_pair_column,
                            label_column=label_column, label_names=split_list(label_names)),
        student=model, out=out, tokenizer=tokenizer, train_split=train_split, eval_split=eval_split,
        train=_train_config(epochs, batch_size, lr, max_length, seed, device, patience, 0))
    with ProgressEvents() as events:
        result = run_finetune(config, events.task, events.advance)
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
    device: Annotated[str, typer.Option(help="--ensemble: auto, cpu or cuda.")] = "auto",
) -> None:
    """Compare runs side by side: accuracy, macro-F1, MCC, median per-class difference to each teacher."""
    reports = load_run_reports(runs)
    teachers = sorted({t for r in reports for t in r.get("median_diff", {})})
    shown = Table("run", "strategy", "accuracy", "macro-F1", "MCC", *[f"Δ {t}" for t in teachers], "params",
                  "ms/sample")
    lines = ["| run | strategy | accuracy | macro-F1 | MCC | " + " | ".join(f"median Δ {t}" for t in teachers)
             + " | params | ms/sample |", "|---" * (7 + len(teachers)) + "|"]
    for r in reports:
        diffs = [r.get("median_diff", {}).get(t) for t in teachers]
        cells = [r["run"], r.get("config", {}).get("strategy", "finetune"), f"{r['accuracy']:.4f}",
                 f"{r['macro_f1']:.4f}", f"{r['mcc']:.4f}", *["–" if d is None else f"{d:+.3f}" for d in diffs],
                 f"{r['parameters']:,}", f"{r['ms_per_sample']:.2f}"]
        shown.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    stdout.print(shown)
    if ensemble:
        lines += ["", *_print_ensemble(evaluate_ensemble(runs, split, cache, device))]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text("\n".join(lines) + "\n")
        plot_run_comparison(out / "comparison.png", reports)
        stdout.print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}")


def _print_ensemble(result) -> list[str]:
    """Print the ensemble table; return it as Markdown lines for comparison.md."""
    shown = Table("model", "accuracy", "macro-F1", "MCC", title=f"ensemble of {len(result.members)} students on "
                  f"'{result.split}' ({result.rows} rows)")
    lines = [f"## Ensemble on `{result.split}`", "", "| model | accuracy | macro-F1 | MCC |", "|---|---|---|---|"]
    rows = [*result.members.items(), ("ensemble: majority vote", result.majority_vote),
            ("ensemble: mean probability", result.mean_probability)]
    for name, metrics in rows:
        cells = [name, f"{metrics.accuracy:.4f}", f"{metrics.macro_f1:.4f}", f"{metrics.mcc:.4f}"]
        shown.add_row(*cells, style="bold" if name.startswith("ensemble") else None)
        lines.append("| " + " | ".join(cells) + " |")
    stdout.print(shown)
    return lines
