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

from mtkd_cache import (
    BuildConfig,
    CacheFormatError,
    DatasetSpec,
    MtkdError,
    RunnerConfig,
    TeacherSpec,
    build_cache,
    summarize,
    verify_cache,
)
from mtkd_cache.runners.teachers import parse_label_map

from .common import app, quiet_console, split_list, stdout, user_errors
from .progress import ProgressEvents, stderr


@app.command()
@user_errors
def build(
    dataset: Annotated[str, typer.Option(help="Hub id, a data file (.csv/.jsonl/.parquet), a directory of split files (train.csv, test.jsonl, …), or a save_to_disk directory.")],
    teacher: Annotated[list[str], typer.Option(help="NAME=SOURCE: a save_pretrained directory or hub id[@revision] (torch backend), or an .onnx file with its tokenizer beside it (onnx backend). Repeat for several teachers.")],
    out: Annotated[Path, typer.Option(help="Cache directory to create or resume.")],
    dataset_config: Annotated[str | None, typer.Option(help="Config name of a hub dataset.")] = None,
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    text_pair_column: Annotated[str | None, typer.Option(help="Column holding the second text of sentence-pair tasks (NLI).")] = None,
    label_column: Annotated[str, typer.Option(help="Column holding the label (ClassLabel ids or strings); a split without it is cached unlabeled.")] = "label",
    label_names: Annotated[str | None, typer.Option(help="Comma-separated label names in class-id order, when the data's own are missing or unordered.")] = None,
    splits: Annotated[str | None, typer.Option(help="Comma-separated splits to cache; default: every split of the dataset.")] = None,
    label_map: Annotated[list[str] | None, typer.Option(help="NAME:TEACHER_LABEL=DATASET_LABEL,… for a teacher whose label names differ from the dataset's.")] = None,
    backend: Annotated[str, typer.Option(help="Teacher runtime: torch (checkpoint directories) or onnx (.onnx files from `export`, run by onnxruntime).")] = "torch",
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N]. CUDA asked for but missing is an error.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16/fp16 on CUDA, fp32 on CPU), float32, float16 or bfloat16.")] = "auto",
    max_length: Annotated[int, typer.Option(help="Tokens per text (pair) before truncation; truncations are counted.")] = 128,
    batch_tokens: Annotated[int | None, typer.Option(help="Padded tokens per batch; default 4096 on CPU (2048 with --backend onnx), 32768 on CUDA.")] = None,
    logits_dtype: Annotated[str, typer.Option(help="Stored logit precision: float16 or float32.")] = "float16",
    tensorrt: Annotated[bool, typer.Option(help="--backend onnx on CUDA: TensorRT's provider first (needs TensorRT; slow first build, engines cached).")] = False,
    shard_rows: Annotated[int, typer.Option(help="Rows per shard; a crash loses at most one shard per teacher.")] = 8192,
) -> None:
    """Run every teacher once over the dataset and write (or resume) the teacher-logit cache."""
    label_maps = dict(parse_label_map(item) for item in label_map or [])
    teachers = []
    for argument in teacher:
        spec = TeacherSpec.parse(argument)
        teachers.append(dataclasses.replace(spec, label_map=label_maps.pop(spec.name, ())))
    if label_maps:
        raise _unknown_label_map(label_maps, teachers)
    config = BuildConfig(
        dataset=DatasetSpec(source=dataset, config_name=dataset_config, text_column=text_column,
                            text_pair_column=text_pair_column, label_column=label_column,
                            splits=split_list(splits), label_names=split_list(label_names)),
        teachers=tuple(teachers), out=out,
        runner=RunnerConfig(backend=backend, device=device, dtype=dtype, max_length=max_length,
                            batch_tokens=batch_tokens, tensorrt=tensorrt),
        logits_dtype=logits_dtype, shard_rows=shard_rows,
    )
    with ProgressEvents() as events:
        report = build_cache(config, events)
    stderr.print(f"cache {out}: {report.shards_written} shard(s) written, {report.shards_reused} reused")
    for stage, seconds in report.stage_seconds.items():
        stderr.print(f"  {stage:<24} {seconds:8.1f} s")


def _unknown_label_map(label_maps: dict, teachers: list[TeacherSpec]) -> MtkdError:
    from mtkd_cache import ConfigError

    names = ", ".join(t.name for t in teachers)
    return ConfigError(f"--label-map names teacher(s) {', '.join(label_maps)} but the teachers are {names}.")


@app.command()
@user_errors
def info(
    cache: Annotated[str, typer.Argument(help="Cache directory, or a URL a cache was pushed to (s3://…, hf://…).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show a cache's splits, rows, teachers, label names and sizes (from the manifest alone)."""
    summary = _summary(cache)
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
        teachers.add_row(t["name"], t["source"], t["backend"], t["dtype"], str(t["max_length"]), t["weights_sha256"],
                         f"{truncated:,} rows")
    stdout.print(teachers)
    stdout.print(f"{summary.shards} shards, {summary.total_bytes / 1e6:.2f} MB, logits {summary.logits_dtype}, "
                 f"{summary.logits_bytes_per_sample:.1f} bytes per sample per teacher")


def _summary(cache: str):
    if "://" not in cache:
        return summarize(Path(cache))
    from mtkd_cache.cache.sharing import read_remote_manifest
    from mtkd_cache.cache.verify import summarize_manifest

    manifest = read_remote_manifest(cache)
    if manifest is None:
        raise CacheFormatError(f"{cache} holds no manifest.json; is it the URL a cache was pushed to?")
    return summarize_manifest(manifest, cache)


@app.command()
@user_errors
def verify(cache: Annotated[Path, typer.Argument(help="Cache directory.")]) -> None:
    """Re-hash every shard the manifest lists; exit 1 naming each bad file."""
    report = verify_cache(cache)
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    per_class: Annotated[int | None, typer.Option(help="Use at most this many articles per topic (a quick run).")] = None,
) -> None:
    """The whole product on real BBC News text with MiniLM teachers, offline; a second run reuses everything."""
    from mtkd_cache.demo.pipeline import run_demo

    started = time.perf_counter()
    with ProgressEvents() as events:
        report = run_demo(out, events, per_class=per_class, device=device, progress=events.task, advance=events.advance)
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


from . import (  # noqa: E402,F401 - register their commands on `app`
    augment_commands,
    distill_commands,
    model_commands,  # noqa: E402,F401 - export, predict
    sharing_commands,
    sweep_commands,
)


def main() -> None:
    # The tokenizers thread pool warns (and can deadlock) when a process forks after using it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if int(os.environ.get("RANK", "0")) > 0:
        quiet_console()  # under torchrun rank 0 speaks for all; the others only report their own errors
    app(prog_name="mtkd-cache")


if __name__ == "__main__":
    sys.exit(main())
