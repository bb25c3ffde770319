"""receipts.py: a rank > 0 reports shards by receipt; only receipts whose bytes and teacher still match
are adopted into rank 0's manifest, every other one is dropped (its shard is then recomputed)."""

from __future__ import annotations

import dataclasses

from helpers.tiny_cache import empty_manifest, shard_tables, teacher_record
from mtkd_cache.cache.receipts import ReceiptWriter, adopt_receipts
from mtkd_cache.layout import RECEIPTS_DIR, receipt_path


def _received(out, starts=(0, 4), teacher=None):
    teacher = teacher or teacher_record()
    with ReceiptWriter(out, empty_manifest().dataset.fingerprint) as writer:
        for start in starts:
            record, table, schema = shard_tables(6, teacher.name, start, min(start + 4, 6))
            writer.submit(record, table, schema, teacher)
    return teacher


def test_valid_receipts_are_adopted_and_removed(tmp_path):
    teacher = _received(tmp_path)
    assert sorted(p.name for p in (tmp_path / RECEIPTS_DIR).iterdir()) == [
        receipt_path(f"outputs/t/train/rows-{a:010d}-{b:010d}.parquet").split("/", 1)[1] for a, b in ((0, 4), (4, 6))]
    manifest = empty_manifest()
    assert adopt_receipts(tmp_path, manifest, {"t": teacher}) == 2
    assert manifest.complete("train", "t") and manifest.teachers["t"] == teacher
    assert not (tmp_path / RECEIPTS_DIR).exists()


def test_a_receipt_whose_shard_changed_or_whose_teacher_differs_is_dropped(tmp_path):
    teacher = _received(tmp_path)
    damaged = tmp_path / "outputs/t/train/rows-0000000004-0000000006.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    manifest = empty_manifest()
    assert adopt_receipts(tmp_path, manifest, {"t": teacher}) == 1
    assert [s.row_start for s in manifest.shards] == [0]

    _received(tmp_path, starts=(4,))
    other = dataclasses.replace(teacher, weights_sha256="2" * 64)  # the teacher being built now is another one
    assert adopt_receipts(tmp_path, empty_manifest(), {"t": other}) == 0
    assert not (tmp_path / RECEIPTS_DIR).exists()


def test_a_shard_the_manifest_already_lists_is_not_adopted_twice(tmp_path):
    teacher = _received(tmp_path, starts=(0,))
    manifest = empty_manifest()
    adopt_receipts(tmp_path, manifest, {"t": teacher})
    _received(tmp_path, starts=(0,))
    assert adopt_receipts(tmp_path, manifest, {"t": teacher}) == 0 and len(manifest.shards) == 1
