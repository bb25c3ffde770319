"""Caches and manifests for the integrity tests: a tiny cache whose fingerprints are the real ones (so
`verify`, which recomputes them, passes it), and a forger that edits a manifest and recomputes its digest
(the self-consistent but wrong manifests of issue #14)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from helpers.tiny_cache import LABELS, empty_manifest, teacher_record
from mtkd_cache.cache.committer import ShardCommitter
from mtkd_cache.cache.manifest import Manifest, ShardRecord, SplitRecord, manifest_digest
from mtkd_cache.cache.shards import inputs_schema, inputs_table, outputs_schema, outputs_table
from mtkd_cache.data.datasets import SplitData, TaskData
from mtkd_cache.layout import MANIFEST_NAME, inputs_path, outputs_path


def write_tiny_cache(out: Path, rows: int = 6, shard_rows: int = 4, teacher: str = "t",
                     splits: dict[str, int] | None = None, teachers: tuple[str, ...] | None = None) -> Manifest:
    """A committed cache in `out` (default: split `train` of 6 rows, 4-row shards, one teacher `t`) whose split
    and dataset fingerprints are those of its rows, so it verifies; `splits` {name: rows} and `teachers`
    (each with its own weights hash and logits) make a larger one."""
    splits = splits or {"train": rows}
    teachers = teachers or (teacher,)
    manifest = empty_manifest(rows, shard_rows)
    data = {name: _split_rows(name, count) for name, count in splits.items()}
    manifest.splits = {name: SplitRecord(split.rows, split.fingerprint, True) for name, split in data.items()}
    manifest.dataset.fingerprint = TaskData(tuple(LABELS), data).fingerprint
    out.mkdir(parents=True, exist_ok=True)
    with ShardCommitter(out, manifest) as committer:
        for name, split in data.items():
            for start in range(0, split.rows, shard_rows):
                end = min(start + shard_rows, split.rows)
                table = inputs_table(np.arange(start, end), split.texts[start:end], None, split.labels[start:end])
                committer.submit(ShardRecord(inputs_path(name, start, end), name, None, start, end, end - start, 0, ""),
                                 table, inputs_schema(False))
        for position, owner in enumerate(teachers):
            record = dataclasses.replace(teacher_record(owner), weights_sha256=str(position) * 64)
            for name, split in data.items():
                for start in range(0, split.rows, shard_rows):
                    end = min(start + shard_rows, split.rows)
                    ids = np.arange(start, end)
                    logits = np.stack([ids * 0.5 + position, -ids * 0.25 - position], axis=1).astype(np.float32)
                    table = outputs_table(ids, logits, logits.argmax(axis=1), "float16")
                    shard = ShardRecord(outputs_path(owner, name, start, end), name, owner, start, end, end - start, 0, "")
                    committer.submit(shard, table, outputs_schema(len(LABELS), "float16"), record)
    return manifest


def _split_rows(name: str, rows: int) -> SplitData:
    ids = np.arange(rows)
    prefix = "" if name == "train" else f"{name} "  # train's texts are tiny_cache's
    return SplitData(name, [f"{prefix}text {i}" for i in ids], None, ids % 2, tuple(LABELS))


def forge_manifest(cache: Path, edit) -> None:
    """Apply `edit` to the manifest's JSON and recompute its digest: a wrong manifest that is self-consistent."""
    path = cache / MANIFEST_NAME
    raw = json.loads(path.read_text())
    edit(raw)
    raw["digest"] = manifest_digest(raw)
    path.write_text(json.dumps(raw, indent=1))


def shard_entry(raw: dict, split: str, teacher: str | None, row_start: int) -> dict:
    return next(s for s in raw["shards"] if (s["split"], s["teacher"], s["row_start"]) == (split, teacher, row_start))
