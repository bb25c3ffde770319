"""Two `push` processes to one remote at the same time (issue #14, item 1): both exit 0 and the remote lists
both teachers, for a directory remote (its lock) and for S3 (conditional manifest writes).

Two tiny caches of the same data hold one teacher each (t1, t2). Each push runs as its own `mtkd-cache push`
process; both are started together, and each sleeps for a moment after reading the remote's manifest, so
their read-merge-write windows overlap in every trial (without a guard, the later write drops the other
teacher every time). S3 is moto's server on 127.0.0.1, serving one request at a time as S3 applies a
conditional PUT atomically (moto's threaded server checks and stores in two steps another thread can split).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.faults import subprocess_env
from helpers.manifests import write_tiny_cache
from helpers.moto_s3 import moto_server, point_s3_at
from mtkd_cache import verify_cache
from mtkd_cache.cache.sharing import pull, read_remote_manifest

TRIALS = 4
BUCKET = "mtkd-concurrent"
READ_PAUSE_SECONDS = 1.5  # after each read of the remote manifest: longer than the two processes' start skew

# The CLI's `push`, pausing after every read of manifest.json (local directory or S3) to widen the race.
_SLOW_READING_PUSH = """
import asyncio, sys, time
pause = float(sys.argv[1])
from fsspec.implementations.local import LocalFileSystem
original_cat = LocalFileSystem.cat_file
def cat_file(self, path, *args, **kwargs):
    try:
        return original_cat(self, path, *args, **kwargs)
    finally:
        if str(path).endswith("manifest.json"):
            time.sleep(pause)
LocalFileSystem.cat_file = cat_file
try:
    import s3fs
except ImportError:
    s3fs = None
if s3fs is not None:
    original_s3_cat = s3fs.S3FileSystem._cat_file
    async def _cat_file(self, path, *args, **kwargs):
        try:
            return await original_s3_cat(self, path, *args, **kwargs)
        finally:
            if str(path).endswith("manifest.json"):
                await asyncio.sleep(pause)
    s3fs.S3FileSystem._cat_file = _cat_file
sys.argv = ["mtkd-cache", "push", *sys.argv[2:]]
from mtkd_cache_cli.app import main
main()
"""


@pytest.fixture(scope="module")
def one_teacher_caches(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("concurrent")
    write_tiny_cache(root / "t1", rows=12, teacher="t1")
    write_tiny_cache(root / "t2", rows=12, teacher="t2")
    return root / "t1", root / "t2"


def _push_together(caches: tuple[Path, Path], url: str, env: dict[str, str]) -> None:
    processes = [subprocess.Popen([sys.executable, "-c", _SLOW_READING_PUSH, str(READ_PAUSE_SECONDS), str(c), url],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in caches]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]


def _assert_both_listed_and_pull_clean(url: str, local: Path) -> None:
    manifest = read_remote_manifest(url)
    assert manifest is not None
    assert sorted(manifest.teachers) == ["t1", "t2"]
    assert {r.teacher for r in manifest.shards} == {None, "t1", "t2"}
    pull(url, local)
    report = verify_cache(local)
    assert report.ok and report.stray_files == [] and report.incomplete == [], report


@pytest.mark.fault
@pytest.mark.parametrize("trial", range(TRIALS))
def test_concurrent_pushes_to_a_directory_keep_both_teachers(trial, one_teacher_caches, tmp_path):
    remote = tmp_path / "remote"
    _push_together(one_teacher_caches, str(remote), subprocess_env())
    _assert_both_listed_and_pull_clean(str(remote), tmp_path / "pulled")
    assert verify_cache(remote).stray_files == []  # the remote is a cache directory itself: nothing left over


# ------------------------------------------------------------------------------------------ S3 (moto)

@pytest.fixture(scope="module")
def serial_moto_endpoint():
    pytest.importorskip("s3fs")
    with moto_server(BUCKET, serial=True) as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(serial_moto_endpoint, monkeypatch, tmp_path) -> dict[str, str]:
    """This process's and the pushers' environment: credentials and endpoint of the loopback server only."""
    import s3fs

    point_s3_at(serial_moto_endpoint, monkeypatch, tmp_path)
    yield subprocess_env()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.fault
@pytest.mark.parametrize("trial", range(TRIALS))
def test_concurrent_pushes_to_s3_keep_both_teachers(trial, one_teacher_caches, s3_env, tmp_path):
    import s3fs

    url = f"s3://{BUCKET}/concurrent-trial-{trial}/cache"  # no "[0]" of the test id: s3fs would take it for a glob
    _push_together(one_teacher_caches, url, s3_env)
    _assert_both_listed_and_pull_clean(url, tmp_path / "pulled")
    keys = s3fs.S3FileSystem().find(url)
    assert not [k for k in keys if k.rsplit("/", 1)[-1].startswith(".tmp-")]
