"""Cache commands (build, info, verify, demo) and the entry point. Each command parses options into the
library's config dataclasses, calls one library function and renders its result."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, build_cache, summarize, verify_cache
from mtkd_cache.runners.openai_runner import EndpointOptions
from mtkd_cache.runners.prompts import PromptConfig, parse_verbalizers
from mtkd_cache.runners.teachers import parse_teachers

from .common import LAZY_COMMANDS, app, quiet_console, split_list, stdout, user_errors
from .options import ConfigFile, Threads, from_config
from .progress import ProgressEvents, stderr


@app.command()
@user_errors
def build(
    dataset: Annotated[str, from_config(DatasetSpec, "source", "--dataset")],
    teacher: Annotated[list[str], from_config(BuildConfig, "teachers", "--teacher")],
    out: Annotated[Path, from_config(BuildConfig, "out")],
    dataset_config: Annotated[str | None, from_config(DatasetSpec, "config_name")] = DatasetSpec.config_name,
    text_column: Annotated[str, from_config(DatasetSpec, "text_column")] = DatasetSpec.text_column,
    text_pair_column: Annotated[str | None, from_config(DatasetSpec, "text_pair_column")] = DatasetSpec.text_pair_column,
    label_column: Annotated[str, from_config(DatasetSpec, "label_column")] = DatasetSpec.label_column,
    label_names: Annotated[str | None, from_config(DatasetSpec, "label_names")] = None,
    splits: Annotated[str | None, from_config(DatasetSpec, "splits")] = None,
    label_map: Annotated[list[str] | None, typer.Option(help="NAME:TEACHER_LABEL=DATASET_LABEL,… for a teacher whose label names differ from the dataset's.")] = None,
    backend: Annotated[str, from_config(RunnerConfig, "backend", metavar="[torch|onnx|causal-lm|openai]")] = RunnerConfig.backend,
    device: Annotated[str, from_config(RunnerConfig, "device")] = RunnerConfig.device,
    dtype: Annotated[str, from_config(RunnerConfig, "dtype", metavar="[auto|float32|float16|bfloat16]")] = RunnerConfig.dtype,
    max_length: Annotated[int, from_config(RunnerConfig, "max_length")] = RunnerConfig.max_length,
    batch_tokens: Annotated[int | None, from_config(RunnerConfig, "batch_tokens")] = RunnerConfig.batch_tokens,
    logits_dtype: Annotated[str, from_config(BuildConfig, "logits_dtype", metavar="[float16|float32]")] = BuildConfig.logits_dtype,
    tensorrt: Annotated[bool, from_config(RunnerConfig, "tensorrt")] = RunnerConfig.tensorrt,
    shard_rows: Annotated[int, from_config(BuildConfig, "shard_rows")] = BuildConfig.shard_rows,
    prompt: Annotated[Path | None, from_config(PromptConfig, "template", "--prompt")] = PromptConfig.template,
    verbalizers: Annotated[str | None, from_config(PromptConfig, "verbalizers", help=(
        "label=word,... : the word(s) each class is scored on; default: the label names."))] = None,
    shots: Annotated[int, from_config(PromptConfig, "shots")] = PromptConfig.shots,
    shots_split: Annotated[str, from_config(PromptConfig, "shots_split")] = PromptConfig.shots_split,
    shots_seed: Annotated[int, from_config(PromptConfig, "shots_seed")] = PromptConfig.shots_seed,
    scoring: Annotated[str, from_config(PromptConfig, "scoring", metavar="[auto|first-token|sequence]")] = PromptConfig.scoring,
    calibrate: Annotated[bool, from_config(PromptConfig, "calibrate")] = PromptConfig.calibrate,
    api_key_env: Annotated[str, from_config(EndpointOptions, "api_key_env")] = EndpointOptions.api_key_env,
    concurrency: Annotated[int, from_config(EndpointOptions, "concurrency")] = EndpointOptions.concurrency,
    request_timeout: Annotated[float, from_config(EndpointOptions, "timeout", "--request-timeout")] = EndpointOptions.timeout,
    retries: Annotated[int, from_config(EndpointOptions, "retries")] = EndpointOptions.retries,
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """Run every teacher once over the dataset and write (or resume) the teacher-logit cache."""
    build_config = BuildConfig(
        dataset=DatasetSpec(source=dataset, config_name=dataset_config, text_column=text_column,
                            text_pair_column=text_pair_column, label_column=label_column,
                            splits=split_list(splits), label_names=split_list(label_names)),
        teachers=parse_teachers(teacher, label_map), out=out,
        runner=RunnerConfig(backend=backend, device=device, dtype=dtype, max_length=max_length,
                            batch_tokens=batch_tokens, tensorrt=tensorrt),
        logits_dtype=logits_dtype, shard_rows=shard_rows,
        prompt=PromptConfig(template=prompt, verbalizers=parse_verbalizers(verbalizers), shots=shots, shots_split=shots_split,
                      shots_seed=shots_seed, scoring=scoring, calibrate=calibrate),
        endpoint=EndpointOptions(api_key_env=api_key_env, concurrency=concurrency, timeout=request_timeout, retries=retries),
    )
    with ProgressEvents() as events:
        report = build_cache(build_config, events)
    stderr.print(f"cache {out}: {report.shards_written} shard(s) written, {report.shards_reused} reused")
    for stage, seconds in report.stage_seconds.items():
        stderr.print(f"  {stage:<24} {seconds:8.1f} s")


@app.command()
@user_errors
def info(
    cache: Annotated[str, typer.Argument(help="Cache directory, or a URL a cache was pushed to (s3://…, hf://…).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigFile = None,
) -> None:
    """Show a cache's splits, rows, teachers, label names and sizes (from the manifest alone)."""
    summary = summarize(cache)
    if as_json:
        print(json.dumps(dataclasses.asdict(summary), indent=2))
        return
    stdout.print(f"[bold]{summary.path}[/bold]  format {summary.format_version}  dataset {summary.dataset_source}"
                 f"  fingerprint {summary.dataset_fingerprint[:12]}")
    stdout.print(f"labels ({len(summary.label_names)}): {', '.join(summary.label_names)}")
    splits = Table("split", "rows", "labeled", "teachers complete")
    for split in summary.splits:
        splits.add_row(split.name, f"{split.rows:,}", "yes" if split.labeled else "no", ", ".join(split.teachers_complete) or "-")
    stdout.print(splits)
    teachers = Table("teacher", "source", "backend", "dtype", "max len", "weights", "truncated")
    for t in summary.teachers:
        truncated = sum(t["truncated_rows"].values())
        teachers.add_row(t["name"], t["source"], t["backend"], t["dtype"], str(t["max_length"]), t["weights_sha256"][:12],
                         f"{truncated:,} rows")
    stdout.print(teachers)
    stdout.print(f"{summary.shards} shards, {summary.total_bytes / 1e6:.2f} MB, logits {summary.logits_dtype}, "
                 f"{summary.logits_bytes_per_sample:.1f} bytes per sample per teacher")


@app.command()
@user_errors
def verify(cache: Annotated[str, typer.Argument(help="Cache directory, or the URL a cache was pushed to (fetched "
                                                     "whole into the local store first).")],
           config: ConfigFile = None) -> None:
    """Re-hash every listed shard, check it is the shard listed, recompute the fingerprints; exit 1 naming each problem."""
    from mtkd_cache.cache.store import fetch, is_url

    local = Path(cache)
    if is_url(cache):
        with ProgressEvents() as events:
            local = fetch(cache, events=events).path
    report = verify_cache(local)
    for problem in report.problems:
        stdout.print(f"[red]BAD[/red] {problem}", highlight=False, soft_wrap=True)
    for item in report.incomplete:
        stdout.print(f"[yellow]incomplete[/yellow] {item}: not every row has a committed shard (resume the build)")
    for path in report.stray_files:
        stdout.print(f"[yellow]stray[/yellow] {path}: not listed in the manifest, ignored by readers")
    stdout.print(f"{report.shards_checked} shards, {report.bytes_checked / 1e6:.2f} MB verified in "
                 f"{report.seconds:.2f} s ({report.throughput_mb_s:.0f} MB/s): "
                 + ("OK" if report.ok else f"{len(report.problems)} bad"))
    if not report.ok:
        raise typer.Exit(code=1)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Working directory for the prepared data, teachers, cache and runs.")] = Path("demo-out"),
    device: Annotated[str, from_config(RunnerConfig, "device", help="auto (CUDA when present), cpu or cuda[:N], for the teachers, the cache and the students.")] = RunnerConfig.device,
    per_class: Annotated[int | None, typer.Option(help="Use at most this many articles per topic (a quick run).")] = None,
    threads: Threads = None,
    config: ConfigFile = None,
) -> None:
    """The whole product on real BBC News text with MiniLM teachers, offline; a second run reuses everything."""
    from mtkd_cache.demo.pipeline import run_demo

    started = time.perf_counter()
    with ProgressEvents() as events:
        report = run_demo(out, events, per_class=per_class, device=device)
    experts = Table("class", *report.experts.teachers, "expert", title="expert table (validation)")
    for k, name in enumerate(report.experts.label_names):
        experts.add_row(name, *[f"{a:.3f}" if a == a else "–" for a in report.experts.per_class_accuracy[:, k]],
                        report.experts.teachers[report.experts.experts[k]])
    stdout.print(experts)
    models = report.models
    table = Table("class", *[f"{m.name}\n({m.role})" for m in models], title="per-class accuracy on test")
    for k, name in enumerate(report.experts.label_names):
        table.add_row(name, *["–" if m.per_class[k] is None else f"{m.per_class[k]:.3f}" for m in models])
    table.add_row("accuracy", *[f"{m.accuracy:.3f}" for m in models], style="bold")
    table.add_row("macro-F1", *[f"{m.macro_f1:.3f}" for m in models], style="bold")
    table.add_row("parameters", *[f"{m.parameters / 1e6:.1f}M" for m in models])
    table.add_row("ms / sample", *[f"{m.ms_per_sample:.2f}" for m in models])
    stdout.print(table)
    teachers = [m.name for m in models if m.role == "teacher"]
    diffs = Table("student", *teachers, title="median per-class difference, student − teacher")
    for student, row in report.median_diff.items():
        diffs.add_row(student, *["–" if row[t] is None else f"{row[t]:+.3f}" for t in teachers])
    stdout.print(diffs)
    for stage, seconds in report.stage_seconds.items():
        stdout.print(f"  {stage:<24} {seconds:8.1f} s")
    stdout.print(f"  {'total':<24} {time.perf_counter() - started:8.1f} s")
    stdout.print(f"wrote {out / 'report.md'} and {out / 'report.png'}")


LAZY_COMMANDS.update({  # in the order `--help` lists them, after this module's own commands
    "augment": ("augment_commands", "Write an unlabeled transfer split of augmented copies of a split's texts; "
                                    "`build` reads it like any split."),
    "experts": ("distill_commands", "Per-class accuracy of every teacher (with its 95% credible interval), the "
                                    "expert of each class and the fallback teacher M."),
    "select": ("distill_commands", "Write per-sample teacher weights of a strategy, and print who taught how often."),
    "distill": ("distill_commands", "Train a student from the cache alone with a selection strategy; write the "
                                    "student and the report."),
    "finetune": ("distill_commands", "Plain supervised fine-tuning (a teacher, or a student before distillation); "
                                     "no cache involved."),
    "report": ("distill_commands", "Compare runs side by side: accuracy, macro-F1, MCC, median per-class difference "
                                   "to each teacher."),
    "export": ("model_commands", "Export a teacher or student to ONNX with dynamic axes and label names; check it "
                                 "against torch (exit 1 on failure)."),
    "predict": ("model_commands", "Each model's label and probability for each text, side by side (CPU)."),
    "push": ("sharing_commands", "Send the shards the destination lacks (by sha256), verified on arrival; the "
                                 "manifest goes last."),
    "pull": ("sharing_commands", "Fetch the shards the local cache lacks (inputs and the chosen teachers), "
                                 "verifying every one."),
    "merge": ("sharing_commands", "Join caches built separately on the same dataset fingerprint and labels into one."),
    "import-logits": ("import_commands", "Add logits computed elsewhere (.parquet, .csv, .npy) to a cache as a "
                                         "teacher, every row checked first."),
    "sweep": ("sweep_commands", "Distil a grid of strategies × α × T × seeds × teacher subsets from one load of the "
                                "cache; rank them."),
})


def main() -> None:
    # The tokenizers thread pool warns (and can deadlock) when a process forks after using it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if int(os.environ.get("RANK", "0")) > 0:
        quiet_console()  # under torchrun rank 0 speaks for all; the others only report their own errors
    try:
        app(prog_name="mtkd-cache")
    except SystemExit as exit:
        from mtkd_cache import distributed  # torch-free until a process group was joined

        distributed.leave(exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1))
        raise


if __name__ == "__main__":
    sys.exit(main())
