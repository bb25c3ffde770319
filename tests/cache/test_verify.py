"""verify.py: re-hashing catches what it must and reports strays; `summarize` reads a directory or a URL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.manifests import write_tiny_cache
from mtkd_cache import CacheFormatError, summarize, verify_cache
from mtkd_cache.cache.sharing import push


def test_a_clean_cache_verifies(tmp_path):
    write_tiny_cache(tmp_path / "c")
    report = verify_cache(tmp_path / "c")
    assert report.ok and report.shards_checked == 4 and report.incomplete == [] and report.stray_files == []
    assert report.bytes_checked == sum(p.stat().st_size for p in (tmp_path / "c").rglob("*.parquet"))


def test_a_flipped_byte_on_a_read_only_file_with_its_mtime_kept_is_named(tmp_path):
    manifest = write_tiny_cache(tmp_path / "c")
    shard = tmp_path / "c" / manifest.shards[-1].path
    stat, data = shard.stat(), bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    shard.chmod(0o444)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    report = verify_cache(tmp_path / "c")
    assert not report.ok and len(report.problems) == 1 and manifest.shards[-1].path in report.problems[0]


def test_strays_are_reported_and_a_missing_shard_is_a_problem(tmp_path):
    manifest = write_tiny_cache(tmp_path / "c")
    (tmp_path / "c" / "outputs" / "t" / "train" / "rows-9.parquet").write_bytes(b"stray")
    (tmp_path / "c" / "loose.parquet").write_bytes(b"stray")
    (tmp_path / "c" / manifest.shards[0].path).unlink()
    report = verify_cache(tmp_path / "c")
    assert report.stray_files == ["outputs/t/train/rows-9.parquet", "loose.parquet"]
    assert len(report.problems) == 1 and "missing" in report.problems[0]


def test_an_unfinished_split_is_reported_incomplete(tmp_path):
    manifest = write_tiny_cache(tmp_path / "c")
    manifest.shards = [s for s in manifest.shards if not (s.teacher == "t" and s.row_start > 0)]
    manifest.save(tmp_path / "c")
    assert verify_cache(tmp_path / "c").incomplete == ["train/t"]


@pytest.mark.parametrize("spelling", [str, Path])
def test_summarize_reads_a_directory_given_as_str_or_path(tmp_path, spelling):
    write_tiny_cache(tmp_path / "c")
    summary = summarize(spelling(tmp_path / "c"))
    assert summary.path == str(tmp_path / "c") and summary.shards == 4
    assert [(s.name, s.rows, s.teachers_complete) for s in summary.splits] == [("train", 6, ["t"])]


def test_summarize_reads_a_pushed_cache_by_url_and_refuses_a_url_without_one(tmp_path):
    write_tiny_cache(tmp_path / "c")
    url = f"file://{tmp_path / 'remote'}"
    push(tmp_path / "c", url)
    local, remote = summarize(tmp_path / "c"), summarize(url)
    assert remote.path == url and (remote.shards, remote.total_bytes) == (local.shards, local.total_bytes)
    with pytest.raises(CacheFormatError, match="holds no manifest.json; is it the URL a cache was pushed to"):
        summarize(f"file://{tmp_path / 'nothing-here'}")
