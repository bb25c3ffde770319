"""A cache written straight through the cache stage (no dataset loading, no teacher): for tests of the
cache modules on their own."""

from __future__ import annotations

import numpy as np

from mtkd_cache.cache.manifest import DatasetRecord, Manifest, ShardRecord, SplitRecord, TeacherRecord
from mtkd_cache.cache.shards import inputs_schema, inputs_table, outputs_schema, outputs_table
from mtkd_cache.layout import inputs_path, outputs_path

LABELS = ["neg", "pos"]


def teacher_record(name: str = "t") -> TeacherRecord:
    return TeacherRecord(name, "synthetic", "torch", None, "0" * 64, "1" * 64, "float32", 16, list(LABELS), [0, 1],
                         device="cpu")


def empty_manifest(rows: int = 6, shard_rows: int = 4) -> Manifest:
    return Manifest(
        dataset=DatasetRecord("synthetic", None, "text", None, "label", "f" * 64, "keep", "keep"),
        label_names=list(LABELS), splits={"train": SplitRecord(rows=rows, fingerprint="e" * 64, labeled=True)},
        shard_rows=shard_rows, logits_dtype="float16")


def shard_tables(rows: int, teacher: str | None, start: int, end: int):
    """(record, table, schema) of one inputs shard (teacher None) or one teacher's outputs shard."""
    ids = np.arange(start, end)
    if teacher is None:
        table = inputs_table(ids, [f"text {i}" for i in ids], None, ids % 2)
        return ShardRecord(inputs_path("train", start, end), "train", None, start, end, end - start, 0, ""), table, \
            inputs_schema(False)
    logits = np.stack([ids * 0.5, -ids * 0.25], axis=1).astype(np.float32)
    table = outputs_table(ids, logits, logits.argmax(axis=1), "float16")
    return ShardRecord(outputs_path(teacher, "train", start, end), "train", teacher, start, end, end - start, 0, ""), \
        table, outputs_schema(len(LABELS), "float16")
