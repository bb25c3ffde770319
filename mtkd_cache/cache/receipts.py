"""Shard receipts: how a rank other than 0 reports a finished shard without touching the manifest.

Under torchrun only rank 0 writes the manifest. Every other rank writes each shard under the usual
atomic rules (temp, fsync, rename) and then a receipt, CACHE/.receipts/<shard>.json, holding the shard's
record (size, sha256) and its teacher's record. Rank 0 adopts receipts into the manifest after the
ranks meet at a barrier — and at the start of every build, so the shards a killed rank finished are
kept by the next attempt, with any number of ranks. A receipt is adopted only when its shard's bytes
still hash to the receipt's sha256 and its teacher is the one being built; any other receipt is dropped
(its shard is then simply recomputed).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa

from mtkd_cache.cache.manifest import Manifest, ShardRecord, TeacherRecord, checked_shard, teacher_fields
from mtkd_cache.cache.shards import read_verified_bytes, shard_identity, write_bytes_atomically, write_shard
from mtkd_cache.errors import CacheIntegrityError
from mtkd_cache.layout import RECEIPTS_DIR, receipt_path


def write_receipt(cache_dir: Path, record: ShardRecord, teacher: TeacherRecord) -> None:
    payload = {"shard": dataclasses.asdict(record), "teacher": teacher_fields(teacher)}
    write_bytes_atomically(cache_dir, receipt_path(record.path), json.dumps(payload).encode())


def adopt_receipts(cache_dir: Path, manifest: Manifest, teachers: dict[str, TeacherRecord]) -> int:
    """Move valid receipts into `manifest` (not saved here); returns how many shards were adopted."""
    directory = cache_dir / RECEIPTS_DIR
    adopted = 0
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        record = _adoptable(cache_dir, path, manifest, teachers)
        if record is not None:
            shard, teacher = record
            manifest.teachers[teacher.name] = _merged(manifest.teachers.get(teacher.name), teacher)
            manifest.put_shard(shard)
            adopted += 1
        path.unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    return adopted


def _adoptable(cache_dir: Path, path: Path, manifest: Manifest,
               teachers: dict[str, TeacherRecord]) -> tuple[ShardRecord, TeacherRecord] | None:
    try:
        payload = json.loads(path.read_text())
        shard = checked_shard(ShardRecord(**payload["shard"]))
        teacher = TeacherRecord(**payload["teacher"])
        read_verified_bytes(cache_dir, shard)
    except (OSError, ValueError, TypeError, KeyError, CacheIntegrityError):
        return None
    current = teachers.get(teacher.name) or manifest.teachers.get(teacher.name)
    if (current is None or current.differences(teacher) or shard.teacher != teacher.name
            or shard.split not in manifest.splits or manifest.shard(shard.split, shard.teacher, shard.row_start)):
        return None
    return shard, teacher


def _merged(cached: TeacherRecord | None, received: TeacherRecord) -> TeacherRecord:
    """The teacher's record with truncation counts of every split any rank tokenized."""
    if cached is None:
        return received
    return dataclasses.replace(cached, truncated_rows={**cached.truncated_rows, **received.truncated_rows})


class ReceiptWriter:
    """For ranks > 0: the same interface as ShardCommitter, but each shard is reported by a receipt."""

    def __init__(self, cache_dir: Path, dataset_fingerprint: str):
        self.cache_dir = cache_dir
        self.dataset_fingerprint = dataset_fingerprint  # recorded in each shard's identity, as rank 0 does

    def submit(self, record: ShardRecord, table: pa.Table, schema: pa.Schema, teacher: TeacherRecord) -> None:
        identity = shard_identity(record, self.dataset_fingerprint, teacher)
        record.bytes, record.sha256 = write_shard(self.cache_dir, record.path, table, schema, identity)
        write_receipt(self.cache_dir, record, teacher)

    def wait(self) -> None:
        pass

    def __enter__(self) -> ReceiptWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        pass
