"""`verify` and `info`: what a cache holds, and whether its bytes are still the ones committed.

`verify` re-hashes every listed shard from its bytes; it never trusts mtime, size alone or file mode
(RELIABILITY.md fault 9: DVC once skipped read-only files and missed corruption). A checksum proves only
that the bytes are the ones the manifest lists, so `verify` also checks that each shard is what the
manifest lists it as (its identity metadata and sample ids, shards.check_identity), that teacher logits
are finite, and recomputes every split's fingerprint — and the dataset's — from the cached inputs: a
manifest whose label names were reordered, or whose inputs were swapped between splits, is caught even
when its digest was recomputed. Files under the cache that the manifest does not list are reported as
strays and never read; symbolic links anywhere inside the cache are errors (a cache holds its own files).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mtkd_cache.cache.manifest import Manifest, ShardRecord, load_manifest
from mtkd_cache.cache.shards import check_finite_logits, check_identity, parse_shard, read_verified_bytes
from mtkd_cache.data.datasets import SplitData, TaskData
from mtkd_cache.errors import CacheFormatError, CacheIntegrityError
from mtkd_cache.layout import MANIFEST_NAME, SHARD_FOLDERS


@dataclass
class VerifyReport:
    cache_dir: Path
    shards_checked: int = 0
    bytes_checked: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # one sentence per bad or missing shard, link or fingerprint
    incomplete: list[str] = field(default_factory=list)  # (split, teacher) pairs not fully covered
    stray_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def throughput_mb_s(self) -> float:
        return self.bytes_checked / 1e6 / self.seconds if self.seconds else 0.0


def verify_cache(cache_dir: Path) -> VerifyReport:
    manifest = load_manifest(cache_dir)
    report = VerifyReport(cache_dir=cache_dir)
    report.problems += [f"{link} is a symbolic link; a cache holds only plain files and folders: replace it with "
                        "what it points to or delete it" for link in symlinks_inside(cache_dir)]
    started = time.perf_counter()
    inputs: dict[str, list[pa.Table]] = {}
    for record in manifest.shards:
        try:
            table = _checked_table(cache_dir, record, manifest)
        except CacheIntegrityError as error:
            report.problems.append(str(error))
        else:
            report.bytes_checked += record.bytes
            if record.teacher is None:
                inputs.setdefault(record.split, []).append(table)
        report.shards_checked += 1
    for split in manifest.splits:
        for teacher in (None, *manifest.teachers):
            if not manifest.complete(split, teacher):
                report.incomplete.append(f"{split}/{teacher or 'inputs'}")
    if not report.problems:  # a fingerprint over damaged or missing inputs would only repeat those problems
        report.problems += fingerprint_problems(manifest, inputs)
    report.seconds = time.perf_counter() - started
    report.stray_files = stray_files(cache_dir, manifest)
    return report


def _checked_table(cache_dir: Path, record: ShardRecord, manifest: Manifest) -> pa.Table:
    """The shard's table once its bytes, identity and (for teacher outputs) finite logits are checked."""
    table = parse_shard(read_verified_bytes(cache_dir, record))
    check_identity(table, record, manifest)
    if record.teacher is not None:
        check_finite_logits(table, record)
    return table


def fingerprint_problems(manifest: Manifest, inputs: dict[str, list[pa.Table]]) -> list[str]:
    """Each split's fingerprint (and, when every split is complete, the dataset's) recomputed from the cached
    inputs the way data/datasets.py computes it at build time, compared with the manifest's."""
    problems, splits = [], {}
    for name, record in manifest.splits.items():
        if not manifest.complete(name, None):
            continue  # reported as incomplete
        split = _split_data(name, sorted(inputs[name], key=lambda t: t.column("sample_id")[0].as_py()), manifest)
        if isinstance(split, str):
            problems.append(split)
            continue
        splits[name] = split
        if split.fingerprint != record.fingerprint:
            problems.append(f"split '{name}': its cached inputs fingerprint to {split.fingerprint}, the manifest says "
                            f"{record.fingerprint} (inputs swapped, or label names reordered?); pull a good copy or rebuild")
    if not problems and len(splits) == len(manifest.splits):
        fingerprint = TaskData(tuple(manifest.label_names), splits).fingerprint
        if fingerprint != manifest.dataset.fingerprint:
            problems.append(f"the dataset fingerprint recomputed from the cached inputs is {fingerprint}, the manifest "
                            f"says {manifest.dataset.fingerprint}; pull a good copy or rebuild")
    return problems


def _split_data(name: str, tables: list[pa.Table], manifest: Manifest) -> SplitData | str:
    """The split as the data stage holds it, or a sentence saying why its labels cannot be read."""
    table = pa.concat_tables(tables)
    labels = np.array([-1 if value is None else value for value in table.column("label").to_pylist()], dtype=np.int64)
    outside = np.flatnonzero((labels < -1) | (labels >= len(manifest.label_names)))
    if len(outside):
        return (f"split '{name}': cached label {labels[outside[0]]} (sample {outside[0]}) is not an index into the "
                f"manifest's {len(manifest.label_names)} label names; pull a good copy or rebuild")
    pairs = table.column("text_pair").to_pylist() if "text_pair" in table.column_names else None
    return SplitData(name, table.column("text").to_pylist(), pairs, labels, tuple(manifest.label_names))


def symlinks_inside(cache_dir: Path) -> list[str]:
    """Every symbolic link under the cache (files or folders; links are not followed), relative paths."""
    found = []
    for folder, directories, files in os.walk(cache_dir, followlinks=False):
        for name in directories + files:
            path = Path(folder) / name
            if path.is_symlink():
                found.append(path.relative_to(cache_dir).as_posix())
    return sorted(found)


def stray_files(cache_dir: Path, manifest: Manifest) -> list[str]:
    """Files under the shard folders that the manifest does not list (derived files such as experts/ aside)."""
    listed = {record.path for record in manifest.shards}
    return sorted(
        path.relative_to(cache_dir).as_posix()
        for folder in SHARD_FOLDERS if (cache_dir / folder).is_dir()
        for path in (cache_dir / folder).rglob("*")
        if path.is_file() and path.relative_to(cache_dir).as_posix() not in listed
    ) + sorted(p.name for p in cache_dir.glob("*.parquet"))


@dataclass
class SplitSummary:
    name: str
    rows: int
    labeled: bool
    teachers_complete: list[str]


@dataclass
class CacheSummary:
    path: str
    format_version: int
    tool_version: str
    dataset_source: str
    dataset_fingerprint: str
    label_names: list[str]
    logits_dtype: str
    splits: list[SplitSummary]
    teachers: list[dict]
    shards: int
    total_bytes: int
    logits_bytes_per_sample: float  # teacher shard bytes / (rows × teachers)


def summarize(source: str | Path) -> CacheSummary:
    """What `info` shows, read from the manifest alone (no shard is opened): of a cache directory, or of
    the cache pushed to a URL (`s3://…`, `hf://…`, anything with a scheme fsspec reads)."""
    if isinstance(source, Path) or "://" not in source:
        return summarize_manifest(load_manifest(Path(source)), str(source))
    from mtkd_cache.cache.remote import read_remote_manifest  # fsspec is imported only for a URL

    manifest = read_remote_manifest(source)
    if manifest is None:
        raise CacheFormatError(f"{source} holds no {MANIFEST_NAME}; is it the URL a cache was pushed to?")
    return summarize_manifest(manifest, source)


def _language_model_fields(teacher) -> dict:
    """What `info` shows of a causal-lm, openai or imported teacher (nothing for the others)."""
    shown = {"prompt_sha256": teacher.prompt_sha256, "verbalizers": teacher.verbalizers, "scoring": teacher.scoring,
             "shots": teacher.shots, "calibration": teacher.calibration, "server_model": teacher.server_model,
             "system_fingerprint": teacher.system_fingerprint, "file_sha256": teacher.file_sha256, "note": teacher.note}
    shown = {key: value for key, value in shown.items() if value}
    if teacher.floored_cells:
        shown["logprob_floor"] = teacher.logprob_floor
        shown["floored_cells"] = teacher.floored_per_split()
    return shown


def summarize_manifest(manifest: Manifest, where: str) -> CacheSummary:
    splits = [SplitSummary(name, record.rows, record.labeled,
                           [t for t in manifest.teachers if manifest.complete(name, t)])
              for name, record in manifest.splits.items()]
    output_bytes = sum(r.bytes for r in manifest.shards if r.teacher is not None)
    output_rows = sum(r.rows for r in manifest.shards if r.teacher is not None)
    teachers = [{"name": t.name, "source": t.source, "backend": t.backend, "dtype": t.dtype, "device": t.device,
                 "max_length": t.max_length, "revision": t.revision, "weights_sha256": t.weights_sha256,
                 "truncated_rows": t.truncated_rows, "providers": t.providers, **_language_model_fields(t)}
                for t in manifest.teachers.values()]
    return CacheSummary(
        path=where, format_version=manifest.format_version, tool_version=manifest.tool_version,
        dataset_source=manifest.dataset.source, dataset_fingerprint=manifest.dataset.fingerprint,
        label_names=manifest.label_names, logits_dtype=manifest.logits_dtype, splits=splits, teachers=teachers,
        shards=len(manifest.shards), total_bytes=sum(r.bytes for r in manifest.shards),
        logits_bytes_per_sample=output_bytes / output_rows if output_rows else 0.0,
    )
