"""A run: its directory, its identity, its resume check and the files that describe it.

Invariant: a run is identified by one fingerprint over one payload — the resolved configuration minus
where things live (`out`, `cache`: a moved run or cache still resumes), plus the content of what it reads
(the cache's dataset fingerprint and the teachers' weights, or the dataset's fingerprint). `distill`,
`finetune`, both stages of a two-stage run and every sweep run use it, so a sweep run's directory name
and the checkpoint inside it agree, and a run inside a sweep is the same run as `distill` alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from mtkd_cache.atomic import TEMP_PREFIX, write_atomically
from mtkd_cache.distillation.training import EpochRecord, TrainResult
from mtkd_cache.distributed import DistributedContext
from mtkd_cache.errors import ConfigError, MtkdError
from mtkd_cache.hashing import sha256_bytes
from mtkd_cache.layout import CHECKPOINT, LEGACY_RUN_CONFIG, METRICS_LOG, RUN_CONFIG, STAGE1_DIR
from mtkd_cache.progress import ProgressEvents
from mtkd_cache.report.run_report import RunReport, write_report

PLACES = ("out", "cache")  # where things live, left out of the identity


@dataclass(frozen=True)
class RunIdentity:
    config: dict  # the resolved configuration, JSON-ready, as RUN_CONFIG (run.json) records it
    inputs: dict  # what the run reads, by content (fingerprints and weight hashes)

    @property
    def fingerprint(self) -> str:
        portable = {key: value for key, value in self.config.items() if key not in PLACES}
        return sha256_bytes(json.dumps({**portable, **self.inputs}, sort_keys=True, default=str).encode())


def check_run_directory(directory: Path, option: str = "--out", ours: tuple[str, ...] = ()) -> None:
    """Refuse `directory` as a run's directory unless it is new, empty, or already this tool's: it holds a
    RUN/run.json (or an older run's config.json) that records a fingerprint, or a checkpoint, or one of the names in `ours` (a sweep's
    files). Called before anything is written, so pointing --out at a teacher's or any other directory never
    overwrites its files. Killed writers' temporaries (TEMP_PREFIX) count as nothing."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(f"{option} {directory} is a file; give a new or empty directory (or a run directory).")
    try:
        entries = [p for p in directory.iterdir() if not p.name.startswith(TEMP_PREFIX)]
    except OSError as error:
        raise ConfigError(f"{option} {directory} cannot be read ({error.strerror or error}); fix its "
                          "permissions or choose another directory.") from error
    if not entries or _records_a_run(directory) or any((directory / name).exists() for name in ours):
        return
    raise ConfigError(f"{option} {directory} holds files that are not an mtkd-cache run (e.g. {sorted(p.name for p in entries)[0]}); "
                      "choose a new or empty directory, so nothing in it is overwritten.")


def check_output_file(path: Path, option: str = "--out") -> None:
    """Refuse a file output whose path cannot hold a file: a directory, or a file where a parent directory
    should be (the write would fail half-way with a raw OSError)."""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file name, e.g. {path / 'out.parquet'}.")
    blocker = next((parent for parent in path.parents if parent.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{option} {path}: {blocker} is a file, not a directory; choose another path.")


def _records_a_run(directory: Path) -> bool:
    return (directory / CHECKPOINT).is_file() or read_run_config(directory) is not None


def read_run_config(directory: Path) -> dict | None:
    """The run configuration a run directory records (RUN_CONFIG, or LEGACY_RUN_CONFIG of older runs), or None
    when there is none: a transformers config.json has no fingerprint, so it is never taken for one."""
    for name in (RUN_CONFIG, LEGACY_RUN_CONFIG):
        record = _run_record(directory / name)
        if record is not None:
            return record
    return None


def _run_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("fingerprint"), str) else None


def prepare_directory(directory: Path, option: str = "--out") -> bool:
    """Create `directory` (and its parents); True when this call created it, so a run refused while setting up
    can remove it again. A file in the way or a read-only parent is a one-line error."""
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{option} {directory} cannot be created ({error.strerror or error}); fix the permissions "
                          "or choose another directory.") from error
    return created


def config_payload(config) -> dict:
    """A config dataclass as JSON values (paths and enums as strings, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class Run:
    """The run directory of one identity. Under torchrun every rank holds one; only the main rank writes."""

    def __init__(self, directory: Path, identity: RunIdentity, context: DistributedContext = DistributedContext()):
        check_run_directory(directory)
        self.directory = directory
        self.identity = identity
        self.context = context
        self.config = dict(identity.config)  # run.json without the fingerprint, once `start` has run
        self.created = False  # `start` made the directory: a run refused before its first checkpoint removes it

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    def stage_fingerprint(self, stage: str | None) -> str:
        return self.fingerprint if stage is None else f"{self.fingerprint}:{stage}"

    def checkpoint(self, stage: str | None = None) -> dict | None:
        """The saved training state of this run (of its `stage` subdirectory), read once and handed to
        `train`; None before the first epoch. A checkpoint of another configuration is refused untouched."""
        path = (self.directory if stage is None else self.directory / stage) / CHECKPOINT
        if not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.stage_fingerprint(stage):
            raise ConfigError(f"{self.directory} holds a run with another configuration; choose a new --out or delete it.")
        return state

    def start(self, **derived) -> None:
        """Create the directory and record run.json: the identity's configuration, what was derived while
        setting up (e.g. the student's kind) and the fingerprint."""
        self.created = prepare_directory(self.directory) or self.created
        self.config = {**self.identity.config, **derived}
        if self.context.is_main:
            record = {**self.config, "fingerprint": self.fingerprint}
            write_atomically(self.directory / RUN_CONFIG, json.dumps(record, indent=1), durable=False)
            legacy = self.directory / LEGACY_RUN_CONFIG
            if _run_record(legacy) is not None:
                legacy.unlink()  # an older run resumed: its record now lives under the new name

    @contextlib.contextmanager
    def removed_if_refused(self):
        """Around everything from `start` on: a user error inside removes a directory this run created and
        checkpointed nothing in (see `discard_if_fresh`), then propagates."""
        try:
            yield
        except MtkdError:
            self.discard_if_fresh()
            raise

    def discard_if_fresh(self) -> None:
        """Remove the directory again when this run created it and saved no checkpoint: a run refused while
        setting up (a full disk, a diverged first epoch) leaves no half-written --out behind. A directory with
        a checkpoint is kept: it is what a re-run resumes."""
        if self.created and self.context.is_main and not (self.directory / CHECKPOINT).exists() \
                and not (self.directory / STAGE1_DIR / CHECKPOINT).exists():
            shutil.rmtree(self.directory, ignore_errors=True)

    def finish(self, report: RunReport, label_names: tuple[str, ...], result: TrainResult,
               stage1: TrainResult | None = None) -> None:
        """Write the report files and metrics.jsonl (main rank)."""
        if not self.context.is_main:
            return
        write_report(self.directory, report, label_names)
        self.write_metrics(result, stage1)

    def write_metrics(self, result: TrainResult, stage1: TrainResult | None = None) -> None:
        """metrics.jsonl as far as training got: rewritten after every epoch, so a log or a dashboard follows
        a long run while it trains (main rank)."""
        if self.context.is_main:
            write_atomically(self.directory / METRICS_LOG, history_lines(result, stage1), durable=False)


def epoch_json(record: EpochRecord) -> dict:
    """An epoch as every file and message shows it: counted from 1 (the training loop counts from 0)."""
    return {**dataclasses.asdict(record), "epoch": record.epoch + 1}


def history_lines(result: TrainResult, stage1: TrainResult | None = None) -> str:
    """One JSON line per epoch; a two-stage run lists stage 1's epochs first, marked "stage": 1."""
    lines = []
    for stage, records in ((1, stage1.history if stage1 else []), (2 if stage1 else None, result.history)):
        for record in records:
            lines.append(json.dumps(epoch_json(record) | ({"stage": stage} if stage else {})) + "\n")
    return "".join(lines)


class StageEvents:
    """Progress of stage 1 of a two-stage run: the same events, each epoch labelled as stage 1."""

    def __init__(self, events: ProgressEvents):
        self._events = events

    def task(self, description: str, total: int) -> None:
        self._events.task(f"stage 1 · {description}", total)

    def advance(self, rows: int) -> None:
        self._events.advance(rows)

    def note(self, message: str) -> None:
        self._events.note(message)
