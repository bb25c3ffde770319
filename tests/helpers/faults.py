"""Helpers for the fault battery (tests/cache/test_faults.py) and the sharing tests:
CLI subprocesses, cache inspection and byte-level corruption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache, open_cache
from mtkd_cache.atomic import TEMP_PREFIX
from mtkd_cache.cache.manifest import MANIFEST_NAME, load_manifest

SHARD_ROWS = 16


def subprocess_env(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("MTKD_CACHE_FAULT", None)
    if fault:
        env["MTKD_CACHE_FAULT"] = fault
    return env


def build_argv(data: Path, teachers: dict[str, Path], out: Path, shard_rows: int = SHARD_ROWS) -> list[str]:
    argv = [sys.executable, "-m", "mtkd_cache", "build", "--dataset", str(data), "--out", str(out),
            "--shard-rows", str(shard_rows)]
    for name, source in teachers.items():
        argv += ["--teacher", f"{name}={source}"]
    return argv


def start_build(data: Path, teachers: dict[str, Path], out: Path, shard_rows: int = SHARD_ROWS,
                fault: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(build_argv(data, teachers, out, shard_rows), env=subprocess_env(fault),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def library_build(data: Path, teachers: dict[str, Path], out: Path, shard_rows: int = SHARD_ROWS):
    config = BuildConfig(dataset=DatasetSpec(source=str(data)),
                         teachers=tuple(TeacherSpec(name, str(source)) for name, source in teachers.items()),
                         out=out, shard_rows=shard_rows)
    return build_cache(config)


def copy_cache(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def temporaries(cache: Path) -> list[str]:
    """Every leftover temporary (.tmp-*: shards and the manifest alike)."""
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")
                  if p.name.startswith(TEMP_PREFIX))


def parquet_files(cache: Path) -> set[str]:
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*.parquet")}


def listed_paths(cache: Path) -> set[str]:
    return {record.path for record in load_manifest(cache).shards}


def shard_records(cache: Path, teacher: str | None = "__all__") -> dict[str, tuple[int, str]]:
    """path -> (bytes, sha256) of the listed shards (of one teacher, or all)."""
    return {r.path: (r.bytes, r.sha256) for r in load_manifest(cache).shards
            if teacher == "__all__" or r.teacher == teacher}


def shard_path(cache: Path, split: str, teacher: str | None, index: int) -> str:
    records = load_manifest(cache).shards_of(split, teacher)
    return records[index].path


def assert_ids_exact(cache: Path) -> None:
    """Per split and per (inputs, teacher): listed shards hold sample ids 0..n-1, none twice, none missing."""
    manifest = load_manifest(cache)
    for split, record in manifest.splits.items():
        for teacher in (None, *manifest.teachers):
            ids = np.concatenate([pq.read_table(cache / r.path, columns=["sample_id"]).column("sample_id").to_numpy()
                                  for r in manifest.shards_of(split, teacher)])
            assert len(ids) == len(np.unique(ids)), f"duplicate sample ids in {split}/{teacher}"
            assert np.array_equal(np.sort(ids), np.arange(record.rows)), f"missing sample ids in {split}/{teacher}"
            assert np.array_equal(ids, np.arange(record.rows)), f"sample ids out of order in {split}/{teacher}"


def assert_same_contents(cache: Path, reference: Path) -> None:
    """Inputs, logits and preds of every split and teacher bit-identical to the reference cache."""
    got, want = open_cache(cache), open_cache(reference)
    assert got.teacher_names == want.teacher_names
    assert got.split_names == want.split_names
    for split in want.split_names:
        a, b = got.inputs(split), want.inputs(split)
        assert np.array_equal(a.sample_ids, b.sample_ids) and a.texts == b.texts
        assert np.array_equal(a.labels, b.labels)
        x, y = got.teacher_outputs(split), want.teacher_outputs(split)
        assert x.logits.dtype == y.logits.dtype
        assert np.array_equal(x.logits, y.logits), f"logits differ on {split}"
        assert np.array_equal(x.preds, y.preds), f"preds differ on {split}"


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def nonblank_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def rewrite_manifest(cache: Path, edit) -> None:
    path = cache / MANIFEST_NAME
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
