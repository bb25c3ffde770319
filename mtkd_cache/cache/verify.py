"""`verify` and `info`: what a cache holds, and whether its bytes are still the ones committed.

`verify` re-hashes every listed shard from its bytes; it never trusts mtime, size alone or file mode
(RELIABILITY.md fault 9: DVC once skipped read-only files and missed corruption). Files under the
cache that the manifest does not list are reported as strays and never read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from mtkd_cache.cache.manifest import Manifest, load_manifest
from mtkd_cache.cache.shards import read_verified_bytes
from mtkd_cache.errors import CacheFormatError, CacheIntegrityError
from mtkd_cache.layout import MANIFEST_NAME, SHARD_FOLDERS


@dataclass
class VerifyReport:
    cache_dir: Path
    shards_checked: int = 0
    bytes_checked: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # one sentence per bad or missing shard
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
    started = time.perf_counter()
    for record in manifest.shards:
        try:
            read_verified_bytes(cache_dir, record)
        except CacheIntegrityError as error:
            report.problems.append(str(error))
        else:
            report.bytes_checked += record.bytes
        report.shards_checked += 1
    report.seconds = time.perf_counter() - started
    for split in manifest.splits:
        for teacher in (None, *manifest.teachers):
            if not manifest.complete(split, teacher):
                report.incomplete.append(f"{split}/{teacher or 'inputs'}")
    report.stray_files = stray_files(cache_dir, manifest)
    return report


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
    from mtkd_cache.cache.sharing import read_remote_manifest  # fsspec is imported only for a URL

    manifest = read_remote_manifest(source)
    if manifest is None:
        raise CacheFormatError(f"{source} holds no {MANIFEST_NAME}; is it the URL a cache was pushed to?")
    return summarize_manifest(manifest, source)


def summarize_manifest(manifest: Manifest, where: str) -> CacheSummary:
    splits = [SplitSummary(name, record.rows, record.labeled,
                           [t for t in manifest.teachers if manifest.complete(name, t)])
              for name, record in manifest.splits.items()]
    output_bytes = sum(r.bytes for r in manifest.shards if r.teacher is not None)
    output_rows = sum(r.rows for r in manifest.shards if r.teacher is not None)
    teachers = [{"name": t.name, "source": t.source, "backend": t.backend, "dtype": t.dtype, "device": t.device,
                 "max_length": t.max_length, "revision": t.revision, "weights_sha256": t.weights_sha256[:12],
                 "truncated_rows": t.truncated_rows, "providers": t.providers} for t in manifest.teachers.values()]
    return CacheSummary(
        path=where, format_version=manifest.format_version, tool_version=manifest.tool_version,
        dataset_source=manifest.dataset.source, dataset_fingerprint=manifest.dataset.fingerprint,
        label_names=manifest.label_names, logits_dtype=manifest.logits_dtype, splits=splits, teachers=teachers,
        shards=len(manifest.shards), total_bytes=sum(r.bytes for r in manifest.shards),
        logits_bytes_per_sample=output_bytes / output_rows if output_rows else 0.0,
    )
