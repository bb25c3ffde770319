"""Decoded sidecars (cache/sidecar.py): a later read uses them instead of the Parquet, returns the very same
arrays, and never uses one that is damaged, truncated, foreign or older than its shard; a damaged shard is
still refused as it was before sidecars existed."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import mtkd_cache.cache.reader as reader
import mtkd_cache.cache.sidecar as sidecar
from helpers.manifests import write_tiny_cache
from mtkd_cache import CacheIntegrityError, open_cache, verify_cache
from mtkd_cache.layout import decoded_path


@pytest.fixture
def cache(tmp_path):
    write_tiny_cache(tmp_path / "cache", rows=10, shard_rows=4, teachers=("a", "b"))
    return tmp_path / "cache"


def _fresh_process() -> None:
    """Forget what this process verified, as a new process would."""
    reader._verified.clear()
    sidecar._verified.clear()


def _read(cache):
    outputs = open_cache(cache).teacher_outputs("train")
    return outputs.logits, outputs.preds


def _teacher_records(cache):
    return [r for r in open_cache(cache).manifest.shards if r.teacher is not None]


@pytest.fixture
def parquet_reads(monkeypatch):
    """Counts the teacher shards parsed from Parquet (the path a sidecar replaces)."""
    parsed = []
    original = reader.parse_shard

    def counting(data, columns=None):
        parsed.append(columns)
        return original(data, columns)

    monkeypatch.setattr(reader, "parse_shard", counting)
    return parsed


def test_a_later_read_uses_the_sidecars_and_returns_the_same_arrays(cache, parquet_reads):
    first = _read(cache)
    records = _teacher_records(cache)
    assert len(parquet_reads) == len(records) == 6
    assert all((cache / decoded_path(r.sha256)).is_file() for r in records)
    _fresh_process()
    parquet_reads.clear()
    second = _read(cache)
    assert parquet_reads == []  # every shard came from its sidecar
    assert np.array_equal(first[0].view(np.uint16), second[0].view(np.uint16))
    assert np.array_equal(first[1], second[1]) and second[1].dtype == np.int64
    assert verify_cache(cache).ok and verify_cache(cache).stray_files == []  # derived files are not shards


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "payload byte":
        data[-3] ^= 0x40
    elif how == "header":
        data[12:20] = b"XXXXXXXX"
    elif how == "magic":
        data[0:8] = b"NOTMAGIC"
    elif how == "truncated":
        data = data[:-5]
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["payload byte", "header", "magic", "truncated", "empty"])
def test_a_damaged_sidecar_is_never_used_and_is_rewritten(cache, parquet_reads, how):
    expected = _read(cache)
    record = _teacher_records(cache)[0]
    path = cache / decoded_path(record.sha256)
    _damage(path, how)
    _fresh_process()
    parquet_reads.clear()
    got = _read(cache)
    assert len(parquet_reads) == 1  # the damaged one was read from its shard, the others from their sidecars
    assert np.array_equal(expected[0].view(np.uint16), got[0].view(np.uint16)) and np.array_equal(expected[1], got[1])
    _fresh_process()
    parquet_reads.clear()
    _read(cache)
    assert parquet_reads == []  # rewritten from the shard on that read


def test_a_sidecar_of_other_content_is_not_used(cache, parquet_reads):
    expected = _read(cache)
    first, second = _teacher_records(cache)[:2]  # same rows, different values
    shutil.copyfile(cache / decoded_path(second.sha256), cache / decoded_path(first.sha256))
    _fresh_process()
    parquet_reads.clear()
    got = _read(cache)
    assert len(parquet_reads) == 1
    assert np.array_equal(expected[0].view(np.uint16), got[0].view(np.uint16))


@pytest.mark.parametrize("change", ["replaced", "written in place"])
def test_a_shard_damaged_after_its_sidecar_was_written_is_still_refused(cache, change):
    _read(cache)
    record = _teacher_records(cache)[0]
    shard = cache / record.path
    damaged = bytearray(shard.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    if change == "replaced":  # e.g. a copy tool writing a temporary and renaming it: a new inode
        (cache / "tmp-copy").write_bytes(bytes(damaged))
        os.replace(cache / "tmp-copy", shard)
    else:
        before = shard.stat()
        shard.write_bytes(bytes(damaged))
        # The write's own timestamps, at least one tick later than before (a coarse clock may not have moved).
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns + 10_000_000))
    _fresh_process()
    with pytest.raises(CacheIntegrityError, match="sha256|checksum|damaged|corrupt"):
        _read(cache)


def test_no_sidecar_is_written_where_the_cache_cannot_take_it(cache, parquet_reads, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(sidecar, "write_atomically", refuse)
    expected = _read(cache)
    assert not (cache / "decoded").exists()
    _fresh_process()
    assert np.array_equal(expected[0].view(np.uint16), _read(cache)[0].view(np.uint16))
