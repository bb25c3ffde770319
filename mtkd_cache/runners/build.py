"""`build`: run every teacher once over every split and commit the outputs to the cache.

Order of work: load and validate the dataset and resolve the teachers (nothing is written if either is
unusable), take the cache lock, check what is already committed against what is asked (dataset fingerprint, label names, teacher
identities), then write the missing input shards and the missing teacher shards. Each teacher group
sharing a tokenizer and max length tokenizes a split once. Shards are written and the manifest
committed on a background thread while the next shard computes; at most one commit is in flight, so a
crash loses at most the shard being computed and the one being written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mtkd_cache import distributed
from mtkd_cache.atomic import remove_temporaries
from mtkd_cache.cache.committer import (
    ShardCommitter,
    holds_teacher_outputs,
    make_directory,
    refuse_foreign_directory,
    refuse_symlinks,
)
from mtkd_cache.cache.lock import CacheLock
from mtkd_cache.cache.manifest import (
    FORMAT_VERSION,
    Manifest,
    ShardRecord,
    TeacherRecord,
    load_manifest,
)
from mtkd_cache.cache.receipts import ReceiptWriter, adopt_receipts
from mtkd_cache.cache.shards import (
    LogitsDType,
    inputs_schema,
    inputs_table,
    outputs_schema,
    outputs_table,
    shard_is_intact,
)
from mtkd_cache.data.batching import TokenizedRows, tokenize_rows
from mtkd_cache.data.datasets import DatasetSpec, TaskData, load_task_data
from mtkd_cache.devices import dtype_name
from mtkd_cache.distributed import DistributedContext, balanced_assignment
from mtkd_cache.errors import ConfigError, MtkdError, TeacherError
from mtkd_cache.layout import inputs_path, outputs_path, validate_name
from mtkd_cache.progress import ProgressEvents, SilentEvents
from mtkd_cache.runners.base import (
    RunnerConfig,
    default_batch_tokens,
    make_runner,
    resolve_for_backend,
    resolve_runtime,
    run_rows,
)
from mtkd_cache.runners.build_checks import check_identities, open_or_start
from mtkd_cache.runners.openai_runner import EndpointOptions
from mtkd_cache.runners.prompts import PromptConfig
from mtkd_cache.runners.teachers import ResolvedTeacher, TeacherSpec, check_backend

if TYPE_CHECKING:  # torch loads with the first runner: BuildConfig and `mtkd-cache --help` do not pay for it
    import torch

_MAX_IDS_NAMED = 10


@dataclass(frozen=True)
class BuildConfig:
    """What `build` makes: every teacher over every split of the dataset, into the cache at `out`."""

    dataset: DatasetSpec
    teachers: tuple[TeacherSpec, ...] = field(metadata={"help": (
        "NAME=SOURCE: a save_pretrained directory or a hub id, optionally id@revision (torch and causal-lm "
        "backends), an .onnx file with its tokenizer beside it (onnx backend), or MODEL@BASE_URL (openai backend). "
        "Repeat for several teachers.")})
    out: Path = field(metadata={"help": "Cache directory to create or resume."})
    runner: RunnerConfig = RunnerConfig()
    logits_dtype: LogitsDType = field(default=LogitsDType.FLOAT16, metadata={
        "help": "Stored logit precision: float16 or float32."})
    shard_rows: int = field(default=8192, metadata={
        "help": "Rows per shard; a crash loses at most one shard per teacher."})
    prompt: PromptConfig = field(default=PromptConfig(), metadata={"help": (
        "How causal-lm and openai teachers are prompted and scored (template, verbalizers, shots, scoring).")})
    endpoint: EndpointOptions = field(default=EndpointOptions(), metadata={"help": (
        "How openai teachers are called (key variable, concurrency, timeout, retries).")})

    def __post_init__(self) -> None:
        object.__setattr__(self, "teachers", tuple(self.teachers))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "logits_dtype", LogitsDType.parse(self.logits_dtype, "--logits-dtype"))
        if not self.teachers:
            raise ConfigError("give at least one --teacher NAME=SOURCE.")
        names = [t.name for t in self.teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"teacher name(s) {', '.join(duplicates)} given twice; every --teacher needs its own name.")
        for name in names:
            validate_name(name, "teacher")
        if self.shard_rows < 1:
            raise ConfigError(f"--shard-rows must be positive, not {self.shard_rows}.")


@dataclass
class BuildReport:
    cache_dir: Path
    shards_written: int = 0
    shards_reused: int = 0
    rows_computed: dict[str, int] = field(default_factory=dict)  # per teacher
    stage_seconds: dict[str, float] = field(default_factory=dict)


def build_cache(config: BuildConfig, events: ProgressEvents | None = None) -> BuildReport:
    events = events or SilentEvents()
    device, dtype = resolve_runtime(config.runner)
    report = BuildReport(cache_dir=config.out)

    started = time.perf_counter()
    task = load_task_data(config.dataset)
    for note in task.notes:
        events.note(note)
    report.stage_seconds["load dataset"] = time.perf_counter() - started

    teachers = [resolve_for_backend(spec, task, config.runner, config.prompt, config.endpoint)
                for spec in config.teachers]
    for teacher in teachers:
        if teacher.backend is None:  # a language-model teacher was resolved for its backend already
            check_backend(teacher, config.runner.backend.value, config.runner.dtype.value)
    records = {t.spec.name: _teacher_record(t, config.runner, dtype, device) for t in teachers}

    context = distributed.current()
    if context.active and device.type == "cuda":
        device = context.device(config.runner.device)  # one GPU per rank: LOCAL_RANK's
    if not context.is_main:
        return _build_as_other_rank(config, task, teachers, records, device, dtype, report, context)

    out = config.out
    announced = False
    try:
        refuse_foreign_directory(out)
        created = make_directory(out)
        with CacheLock(out) as lock:
            try:
                if lock.took_over_from:
                    events.note(f"took over a stale lock left by pid {lock.took_over_from.get('pid')}")
                remove_temporaries(out)
                refuse_symlinks(out)
                manifest = open_or_start(out, config.dataset, config.shard_rows, config.logits_dtype, task)
                check_identities(manifest, records)
                if manifest.format_version < FORMAT_VERSION:
                    # Upgraded in place: the manifest is rewritten in the current format; the older shards are
                    # kept as they are (identified by their sample ids), new shards carry their identity.
                    events.note(f"upgraded the cache from format {manifest.format_version} to {FORMAT_VERSION}")
                    manifest.save(out)
                adopted = adopt_receipts(out, manifest, records)
                if adopted:
                    events.note(f"kept {adopted} shard(s) that ranks of an interrupted build had finished")
                    manifest.save(out)
                with ShardCommitter(out, manifest) as committer:
                    started = time.perf_counter()
                    _write_inputs(out, task, manifest, committer, report)
                    committer.wait()
                    report.stage_seconds["inputs"] = time.perf_counter() - started
                    announced = True
                    context.broadcast(None)  # the manifest is committed: the other ranks may start
                    _write_outputs(out, task, manifest, committer, teachers, records, config, device, dtype,
                                   events, report, context)
                if context.active:
                    _gather_counts(report, context)  # every rank has written its shards and receipts
                    adopt_receipts(out, manifest, records)
                    manifest.save(out)
            except BaseException:
                if created and not holds_teacher_outputs(out):
                    shutil.rmtree(out, ignore_errors=True)  # this build made the directory and nothing of value is in it
                raise
    except MtkdError as error:
        if context.active and not announced:
            context.broadcast(str(error))  # the other ranks stop instead of waiting for a manifest
        raise
    return report


def _build_as_other_rank(config: BuildConfig, task: TaskData, teachers: list[ResolvedTeacher],
                         records: dict[str, TeacherRecord], device: torch.device, dtype: torch.dtype | None,
                         report: BuildReport, context: DistributedContext) -> BuildReport:
    """A rank > 0: wait for rank 0's manifest, run this rank's shards, leave a receipt for each."""
    failure = context.broadcast(None)
    if failure is not None:
        raise MtkdError(f"rank 0 stopped the build: {failure}")
    manifest = load_manifest(config.out)
    with ReceiptWriter(config.out, manifest.dataset.fingerprint) as committer:
        _write_outputs(config.out, task, manifest, committer, teachers, records, config, device, dtype,
                       SilentEvents(), report, context)
    _gather_counts(report, context)
    return report


def _gather_counts(report: BuildReport, context: DistributedContext) -> None:
    """Rank 0's report counts every rank's work; doubles as the barrier before receipts are adopted."""
    parts = context.all_gather((report.shards_written, report.rows_computed))
    if context.is_main:
        report.shards_written = sum(written for written, _ in parts)
        report.rows_computed = {name: sum(rows.get(name, 0) for _, rows in parts)
                                for name in dict.fromkeys(n for _, rows in parts for n in rows)}


def _teacher_record(teacher: ResolvedTeacher, runner: RunnerConfig, dtype: torch.dtype | None,
                    device: torch.device) -> TeacherRecord:
    remote = teacher.endpoint is not None  # the server decides the precision and the hardware
    record = TeacherRecord(
        name=teacher.spec.name, source=teacher.spec.source, backend=teacher.backend or runner.backend.value,
        revision=teacher.revision, weights_sha256=teacher.weights_sha256, tokenizer_sha256=teacher.tokenizer_sha256,
        dtype="server" if remote else teacher.file_dtype or dtype_name(dtype),
        max_length=0 if remote else runner.max_length,  # an endpoint sees whole prompts
        model_label_names=list(teacher.model_label_names),
        label_mapping=list(teacher.label_mapping), device="endpoint" if remote else device.type,
    )
    if teacher.prompt is not None:
        for key, value in teacher.prompt.identity().items():
            setattr(record, key, value)
        record.scoring = teacher.scoring
    return record


def _row_ranges(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)]


def _missing(out: Path, manifest: Manifest, split: str, teacher: str | None, report: BuildReport) -> list[tuple[int, int]]:
    missing = []
    for start, end in _row_ranges(manifest.splits[split].rows, manifest.shard_rows):
        record = manifest.shard(split, teacher, start)
        if record is not None and record.row_end == end and shard_is_intact(out, record):
            report.shards_reused += 1
        else:
            missing.append((start, end))
    return missing


def _write_inputs(out: Path, task: TaskData, manifest: Manifest, committer: ShardCommitter,
                  report: BuildReport) -> None:
    for name, split in task.splits.items():
        schema = inputs_schema(split.text_pairs is not None)
        for start, end in _missing(out, manifest, name, None, report):
            pairs = split.text_pairs[start:end] if split.text_pairs is not None else None
            table = inputs_table(np.arange(start, end), split.texts[start:end], pairs, split.labels[start:end])
            record = ShardRecord(inputs_path(name, start, end), name, None, start, end, end - start, 0, "")
            committer.submit(record, table, schema)
            report.shards_written += 1


def _write_outputs(out: Path, task: TaskData, manifest: Manifest, committer: ShardCommitter,
                   teachers: list[ResolvedTeacher], records: dict[str, TeacherRecord], config: BuildConfig,
                   device: torch.device, dtype: torch.dtype, events: ProgressEvents, report: BuildReport,
                   context: DistributedContext = DistributedContext()) -> None:
    batch_tokens = config.runner.batch_tokens or default_batch_tokens(config.runner.backend, device)
    schema = outputs_schema(len(task.label_names), manifest.logits_dtype)
    # Planned before any output is written, so every rank plans from the same committed manifest.
    missing = {t.spec.name: {split: _missing(out, manifest, split, t.spec.name, report) for split in task.splits}
               for t in teachers}
    groups: dict[str, list[ResolvedTeacher]] = {}
    for teacher in teachers:
        groups.setdefault(_inputs_key(teacher), []).append(teacher)
    for members in groups.values():
        tokenized: dict[str, TokenizedRows] = {}  # one tokenization per split for the whole group
        shares = _rank_shares(members, missing, task, config, tokenized, context)
        for teacher in members:
            name = teacher.spec.name
            pending = {split: ranges for split, ranges in shares[name].items() if ranges}
            if not pending:
                if not any(missing[name].values()):
                    events.note(f"teacher '{name}': every shard is already in the cache")
                continue
            started = time.perf_counter()
            runner = make_runner(teacher, config.runner, device, dtype, batch_tokens)
            record = records[name]
            cached = manifest.teachers.get(name)
            if cached is not None:  # counts of the shards an earlier run committed
                record.floored_cells = {split: dict(counts) for split, counts in cached.floored_cells.items()}
            record.attn_implementation = runner.attn_implementation
            record.providers = list(runner.providers)
            for split_name, ranges in pending.items():
                split = task.splits[split_name]
                if split_name not in tokenized:
                    # A runner that renders its own inputs (a prompt around each text) prepares them itself.
                    prepare = getattr(runner, "prepare", None)
                    tokenized[split_name] = (
                        prepare(split_name, split.texts, split.text_pairs, config.runner.max_length) if prepare
                        else tokenize_rows(runner.tokenizer, split.texts, split.text_pairs, config.runner.max_length))
                tokens = tokenized[split_name]
                record.truncated_rows[split_name] = tokens.truncated_rows
                rows = sum(end - start for start, end in ranges)
                # Under torchrun the bar is rank 0's work: say so, beside the split's total over every rank.
                everyone = sum(end - start for start, end in missing[name][split_name])
                share = f" (rank 0: {rows:,} of {everyone:,} rows, {context.world_size} ranks)" if context.active else ""
                events.task(f"{name} · {split_name}{share}", rows)
                for start, end in ranges:
                    logits = run_rows(runner, tokens, start, end, batch_tokens, events)
                    _check_finite(logits, name, split_name, start)
                    _take_reports(runner, record, split_name, start)
                    mapped = logits[:, list(teacher.label_mapping)]
                    with np.errstate(over="ignore"):  # an overflow to inf is refused just below, by name
                        stored = mapped.astype(manifest.logits_dtype)  # what the shard will hold
                    _check_stored_finite(stored, name, split_name, start, manifest.logits_dtype)
                    table = outputs_table(np.arange(start, end), stored, mapped.argmax(axis=1), manifest.logits_dtype)
                    shard = ShardRecord(outputs_path(name, split_name, start, end), split_name, name, start, end,
                                        end - start, 0, "")
                    committer.submit(shard, table, schema, dataclasses.replace(record, truncated_rows=dict(record.truncated_rows)))
                    report.shards_written += 1
                    report.rows_computed[name] = report.rows_computed.get(name, 0) + end - start
            committer.wait()
            close = getattr(runner, "close", None)  # an endpoint's connection pool
            if close is not None:
                close()
            del runner
            if device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            report.stage_seconds[f"teacher {name}"] = time.perf_counter() - started


def _inputs_key(teacher: ResolvedTeacher) -> str:
    """Teachers with one key share one preparation of each split: the same tokenizer, and the same prompt."""
    if teacher.prompt is None:
        return teacher.tokenizer_sha256
    return json.dumps([teacher.backend, teacher.tokenizer_sha256, teacher.prompt.identity()], sort_keys=True)


def _take_reports(runner, record: TeacherRecord, split: str, row_start: int) -> None:
    """What an endpoint runner reported for the rows just scored: server fields, and floored cells per shard."""
    reports = getattr(runner, "reports", None)
    if reports is None:
        return
    for key, value in reports().items():
        if key == "floored_cells":
            record.floored_cells.setdefault(split, {})[str(row_start)] = value
        elif value not in ("", None):
            setattr(record, key, value)


def _rank_shares(members: list[ResolvedTeacher], missing: dict[str, dict[str, list[tuple[int, int]]]],
                 task: TaskData, config: BuildConfig, tokenized: dict[str, TokenizedRows],
                 context: DistributedContext) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """This rank's missing shards of a tokenizer group: all of them alone, a token-balanced part under torchrun."""
    if not context.active:
        return {t.spec.name: missing[t.spec.name] for t in members}
    items = [(t.spec.name, split, rows) for t in members for split, ranges in missing[t.spec.name].items()
             for rows in ranges]
    language_model = members[0].prompt is not None  # its rows are prompts: lengths here are only costs
    if language_model:
        tokenized = {}
    for split in dict.fromkeys(split for _, split, _ in items):
        if language_model and members[0].endpoint is not None:
            texts = task.splits[split].texts
            lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
            tokenized[split] = TokenizedRows(np.zeros(0, np.int32), None, np.concatenate([[0], np.cumsum(lengths)]), 0)
        elif split not in tokenized:
            tokenized[split] = tokenize_rows(_load_tokenizer(members[0]), task.splits[split].texts,
                                             task.splits[split].text_pairs, config.runner.max_length)
    costs = [int(tokenized[split].lengths[start:end].sum()) for _, split, (start, end) in items]
    mine = balanced_assignment(costs, context.world_size)[context.rank]
    shares: dict[str, dict[str, list[tuple[int, int]]]] = {t.spec.name: {} for t in members}
    for index in mine:
        name, split, rows = items[index]
        shares[name].setdefault(split, []).append(rows)
    return shares


def _load_tokenizer(teacher: ResolvedTeacher):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher.directory)


def _check_finite(logits: np.ndarray, teacher: str, split: str, row_start: int) -> None:
    """The teacher's own output: NaN or inf here comes from the model (or its compute dtype)."""
    bad = _non_finite_rows(logits, row_start)
    if len(bad):
        raise TeacherError(
            f"teacher '{teacher}' gave NaN or infinite logits on split '{split}' for {len(bad)} sample(s) "
            f"(sample ids {_shown(bad)}); check the checkpoint, or try --dtype float32 if half precision overflowed."
        )


def _check_stored_finite(stored: np.ndarray, teacher: str, split: str, row_start: int, logits_dtype: str) -> None:
    """What the shard holds, after the cast to the cache's logit dtype: finite logits beyond float16's range
    (65,504) become inf there, and a student distilled from them trains on NaN losses."""
    bad = _non_finite_rows(stored, row_start)
    if len(bad):
        raise TeacherError(
            f"teacher '{teacher}' gave logits too large for {logits_dtype} on split '{split}' for {len(bad)} sample(s) "
            f"(sample ids {_shown(bad)}); build with --logits-dtype float32 into a new --out."
        )


def _non_finite_rows(logits: np.ndarray, row_start: int) -> np.ndarray:
    return np.flatnonzero(~np.isfinite(logits).all(axis=1)) + row_start


def _shown(sample_ids: np.ndarray) -> str:
    return ", ".join(map(str, sample_ids[:_MAX_IDS_NAMED].tolist())) + (" …" if len(sample_ids) > _MAX_IDS_NAMED else "")
