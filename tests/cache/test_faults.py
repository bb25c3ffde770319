"""Fault and bad-input battery (RELIABILITY.md): crashes, corruption, identity changes, bad data, concurrency.

One uninterrupted reference build per module (library API, shard_rows 16 → 8 shards per teacher and 8
input shards) is the bit-exact baseline; every test that changes a cache works on its own copy. SIGKILLs
need a real process: those builds run as `python -m mtkd_cache build` subprocesses, started together so
their start-up (imports, model loading) overlaps. Everything else goes through the library or typer's CliRunner.
"""

from __future__ import annotations

import builtins
import csv
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import mtkd_cache.atomic as atomic_module
import mtkd_cache.cache.shards as shards_module
from helpers.assets import LABELS, make_rows, make_teacher, write_csv
from helpers.faults import (
    SHARD_ROWS,
    assert_ids_exact,
    assert_same_contents,
    build_argv,
    copy_cache,
    error_lines,
    flip_byte,
    library_build,
    listed_paths,
    nonblank_lines,
    parquet_files,
    rewrite_manifest,
    shard_path,
    shard_records,
    start_build,
    subprocess_env,
    temporaries,
)
from mtkd_cache import CacheFormatError, CacheIntegrityError, CacheWriteError, _faults, open_cache, verify_cache
from mtkd_cache._faults import InjectedFault
from mtkd_cache.atomic import TEMP_PREFIX
from mtkd_cache.cache.lock import CacheLock
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.layout import LOCK_NAME, MANIFEST_NAME
from mtkd_cache_cli.app import app

runner = CliRunner()
TOTAL_SHARDS = 24  # (4 train + 2 validation + 2 test) × (inputs, bert, distil) at 16 rows per shard
# Hit counts chosen to land in different places: commits 1-8 are inputs, 9-16 bert, 17-24 distil.
KILL_POINTS = {"teacher_batch": 11, "shard_written": 12, "shard_renamed": 13, "manifest_tmp_written": 14}


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def _no_fault_in_process(monkeypatch):
    monkeypatch.delenv("MTKD_CACHE_FAULT", raising=False)
    _faults._hits.clear()
    yield
    _faults._hits.clear()


@pytest.fixture(scope="module")
def teachers(assets) -> dict[str, Path]:
    return {"bert": assets["bert"], "distil": assets["distil"]}


@pytest.fixture(scope="module")
def killed_builds(assets, teachers, tmp_path_factory):
    """One CLI build per fault point, all started at once, each SIGKILLed at its point."""
    root = tmp_path_factory.mktemp("killed")
    started = {point: (root / point, start_build(assets["data"], teachers, root / point, fault=f"{point}:{hit}"))
               for point, hit in KILL_POINTS.items()}
    results = {}
    try:
        for point, (out, process) in started.items():
            _, stderr = process.communicate(timeout=400)
            results[point] = (out, process.returncode, stderr)
    finally:
        for _, process in started.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


@pytest.fixture(scope="module")
def reference(assets, teachers, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "cache"
    report = library_build(assets["data"], teachers, out)
    assert report.shards_written == TOTAL_SHARDS
    return out


@pytest.fixture(scope="module")
def bert_only(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bert_only") / "cache"
    library_build(assets["data"], {"bert": assets["bert"]}, out)
    return out


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _cli_build(data: Path, teachers: dict[str, Path], out: Path, *extra: str):
    argv = ["build", "--dataset", str(data), "--out", str(out), "--shard-rows", str(SHARD_ROWS)]
    for name, source in teachers.items():
        argv += ["--teacher", f"{name}={source}"]
    return _cli(*argv, *extra)


def _assert_one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    return lines[0]


def _outputs_equal(cache: Path, reference: Path, teacher: str, split: str) -> bool:
    a = open_cache(cache).teacher_outputs(split, [teacher])
    b = open_cache(reference).teacher_outputs(split, [teacher])
    return np.array_equal(a.logits, b.logits) and np.array_equal(a.preds, b.preds)


# ------------------------------------------------------------------------------------- crash and resume

@pytest.mark.fault
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_at_fault_point_then_resume(point, killed_builds, reference, assets, teachers):
    out, returncode, stderr = killed_builds[point]
    hit = KILL_POINTS[point]
    assert returncode == -signal.SIGKILL, f"build was not SIGKILLed at {point}:{hit}: rc {returncode}\n{stderr[-3000:]}"

    # Between kill and resume: the last committed manifest is readable and every shard it lists verifies.
    cache = open_cache(out)
    manifest = cache.manifest
    report = verify_cache(out)
    assert report.ok, report.problems
    assert report.shards_checked == len(manifest.shards) > 0
    leftovers = temporaries(out)
    unlisted = sorted(set(report.stray_files) - set(leftovers))
    if point != "teacher_batch":  # one manifest save per shard: the hit-th commit never happened
        assert len(manifest.shards) == hit - 1
    if point == "shard_written":
        assert [p for p in leftovers if Path(p).name.startswith(".tmp-")], "kill before rename leaves a shard temp"
        assert unlisted == []
    elif point == "shard_renamed":
        assert leftovers == [] and len(unlisted) == 1 and unlisted[0].endswith(".parquet")
    elif point == "manifest_tmp_written":
        assert len(leftovers) == 1 and leftovers[0].startswith(f"{TEMP_PREFIX}{MANIFEST_NAME}.")
        assert len(unlisted) == 1 and unlisted[0].endswith(".parquet")
    ref = open_cache(reference)
    for split in manifest.splits:
        for name in manifest.teachers:
            if manifest.complete(split, name):  # committed and complete: already bit-identical
                got, want = cache.teacher_outputs(split, [name]), ref.teacher_outputs(split, [name])
                assert np.array_equal(got.logits, want.logits) and np.array_equal(got.preds, want.preds)

    resumed = library_build(assets["data"], teachers, out)
    assert resumed.shards_written + resumed.shards_reused == TOTAL_SHARDS
    assert resumed.shards_reused == len(manifest.shards)
    assert temporaries(out) == []
    final = verify_cache(out)
    assert final.ok and final.incomplete == [] and final.stray_files == []
    assert_ids_exact(out)
    assert_same_contents(out, reference)
    assert shard_records(out) == shard_records(reference)  # byte-identical shards


@pytest.mark.fault
def test_teacher_raising_at_batch_k_keeps_previous_manifest(bert_only, reference, assets, teachers, tmp_path,
                                                            monkeypatch):
    out = copy_cache(bert_only, tmp_path / "cache")
    before = load_manifest(out)
    bert_shards = shard_records(out, "bert")
    monkeypatch.setenv("MTKD_CACHE_FAULT", "teacher_batch:3:raise")  # distil's third train shard
    with pytest.raises(InjectedFault):
        library_build(assets["data"], teachers, out)
    monkeypatch.delenv("MTKD_CACHE_FAULT")

    after = load_manifest(out)
    assert parquet_files(out) == listed_paths(out), "a file sits at a final shard path the manifest does not list"
    assert temporaries(out) == []
    report = verify_cache(out)
    assert report.ok and report.stray_files == []
    assert shard_records(out, "bert") == bert_shards
    assert after.teachers["bert"] == before.teachers["bert"]
    assert shard_records(out, None) == shard_records(bert_only, None)
    assert len(after.shards_of("train", "distil")) <= 2 and not after.complete("train", "distil")
    for split in before.splits:
        assert _outputs_equal(out, reference, "bert", split)

    library_build(assets["data"], teachers, out)  # and it resumes to the reference
    assert_same_contents(out, reference)


def _full_disk_open(error: int, failing: str = "shard"):
    """An `open` for mtkd_cache.atomic whose writes of shards (or of the manifest) fail like a full (or
    read-only) disk; other files are written as usual."""
    def fake_open(file, mode="r", *args, **kwargs):
        hit = ".parquet" in Path(file).name if failing == "shard" else MANIFEST_NAME in Path(file).name
        if hit and ("w" in mode or "a" in mode):
            if error == errno.ENOSPC:  # the temp file gets created, then the write fails
                builtins.open(file, mode, *args, **kwargs).close()
            raise OSError(error, os.strerror(error), str(file))
        return builtins.open(file, mode, *args, **kwargs)
    return fake_open


@pytest.mark.fault
@pytest.mark.parametrize("failing", ["shard", "manifest"])
@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only-fs"])
def test_write_failure_keeps_previous_state(error, failing, bert_only, reference, assets, teachers, tmp_path,
                                            monkeypatch):
    out = copy_cache(bert_only, tmp_path / "cache")
    manifest_bytes = (out / MANIFEST_NAME).read_bytes()
    monkeypatch.setattr(atomic_module, "open", _full_disk_open(error, failing), raising=False)
    with pytest.raises(CacheWriteError) as raised:
        library_build(assets["data"], teachers, out)
    assert os.strerror(error) in str(raised.value)
    assert ("outputs/distil/" if failing == "shard" else MANIFEST_NAME) in str(raised.value)
    monkeypatch.undo()

    assert (out / MANIFEST_NAME).read_bytes() == manifest_bytes
    assert temporaries(out) == []
    report = verify_cache(out)
    assert report.ok
    unlisted = parquet_files(out) - listed_paths(out)
    if failing == "shard":
        assert unlisted == set() and report.stray_files == []
    else:  # the shard was renamed before its manifest commit failed: an unlisted stray, like a kill there
        assert len(unlisted) <= 1 and report.stray_files == sorted(unlisted)
    for split in ("train", "validation", "test"):
        assert _outputs_equal(out, reference, "bert", split)
    library_build(assets["data"], teachers, out)  # space freed: the next build finishes it
    assert temporaries(out) == []
    assert_same_contents(out, reference)


@pytest.mark.fault
def test_disk_full_is_one_clear_cli_error(bert_only, assets, teachers, tmp_path, monkeypatch):
    out = copy_cache(bert_only, tmp_path / "cache")
    monkeypatch.setattr(atomic_module, "open", _full_disk_open(errno.ENOSPC), raising=False)
    result = _cli_build(assets["data"], teachers, out)
    line = _assert_one_error_line(result)
    assert "No space left on device" in line


@pytest.mark.fault
def test_deleted_shards_are_exactly_recomputed(reference, assets, teachers, tmp_path):
    out = copy_cache(reference, tmp_path / "cache")
    deleted = [shard_path(out, "train", "bert", 1), shard_path(out, "test", "distil", 1)]
    original = {path: (out / path).read_bytes() for path in deleted}
    for path in deleted:
        (out / path).unlink()
    assert not verify_cache(out).ok

    report = library_build(assets["data"], teachers, out)
    assert report.shards_written == 2
    assert report.shards_reused == TOTAL_SHARDS - 2
    assert report.rows_computed == {"bert": 16, "distil": 14}
    for path, data in original.items():
        assert (out / path).read_bytes() == data
    assert verify_cache(out).ok
    assert shard_records(out) == shard_records(reference)


# -------------------------------------------------------------------------------------------- integrity

@pytest.mark.fault
@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only-mtime-restored"])
@pytest.mark.parametrize("where", ["header", "data-page", "footer"])
def test_flipped_byte_is_detected(where, read_only, reference, tmp_path):
    out = copy_cache(reference, tmp_path / "cache")
    relative = shard_path(out, "train", "bert", 1)
    target = out / relative
    size = target.stat().st_size
    offset = {"header": 1, "data-page": size // 2, "footer": size - 2}[where]
    stat = target.stat()
    flip_byte(target, offset)
    if read_only:
        target.chmod(0o444)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert target.stat().st_mtime_ns == stat.st_mtime_ns and target.stat().st_size == size

    result = _cli("verify", out)
    assert result.exit_code == 1, result.output
    bad = [line for line in result.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and relative in bad[0] and "sha256" in bad[0], result.stdout
    with pytest.raises(CacheIntegrityError, match=relative):
        open_cache(out).teacher_outputs("train")
    assert _outputs_equal(out, reference, "distil", "train")  # the other teacher is untouched


@pytest.mark.fault
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_truncated_or_empty_shard_caught_by_size_before_parsing(damage, reference, tmp_path, monkeypatch):
    import mtkd_cache.cache.reader as reader_module

    out = copy_cache(reference, tmp_path / "cache")
    relative = shard_path(out, "train", "bert", 0)
    target = out / relative
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    damaged = target.read_bytes()
    touched = []  # the reader parses other shards in parallel: only the damaged bytes must stay untouched
    real_parse, real_hash = reader_module.parse_shard, shards_module.sha256_bytes
    monkeypatch.setattr(reader_module, "parse_shard",
                        lambda data, *a, **k: touched.append("parse") if data == damaged else real_parse(data, *a, **k))
    monkeypatch.setattr(shards_module, "sha256_bytes",
                        lambda data: touched.append("hash") if data == damaged else real_hash(data))
    with pytest.raises(CacheIntegrityError, match="bytes") as raised:
        open_cache(out).teacher_outputs("train", ["bert"])
    assert relative in str(raised.value) and str(len(data)) in str(raised.value)
    assert touched == [], "the damaged shard was hashed or parsed before its size was checked"
    monkeypatch.undo()

    result = _cli("verify", out)
    assert result.exit_code == 1
    assert any(relative in line and "bytes" in line for line in result.stdout.splitlines())


@pytest.mark.fault
def test_stray_parquet_reported_and_ignored(reference, tmp_path):
    out = copy_cache(reference, tmp_path / "cache")
    look_alike = "outputs/bert/train/rows-0000000016-0000000032.parquet.bak.parquet"
    shutil.copy(out / shard_path(out, "train", "distil", 1), out / look_alike)
    (out / "inputs" / "train" / "junk.parquet").write_bytes(b"not parquet at all")

    result = _cli("verify", out)
    assert result.exit_code == 0, result.output
    strays = [line for line in result.stdout.splitlines() if line.startswith("stray")]
    assert len(strays) == 2 and any(look_alike in s for s in strays) and any("junk.parquet" in s for s in strays)
    assert "OK" in result.stdout
    assert_same_contents(out, reference)


@pytest.mark.fault
@pytest.mark.parametrize("command", ["info", "verify"])
@pytest.mark.parametrize("damage", ["missing", "invalid-json", "format-99"])
def test_bad_manifest_is_one_line_exit_2(damage, command, reference, tmp_path):
    out = copy_cache(reference, tmp_path / "cache")
    manifest = out / MANIFEST_NAME
    if damage == "missing":
        manifest.unlink()
    elif damage == "invalid-json":
        manifest.write_text(manifest.read_text()[:200])
    else:
        rewrite_manifest(out, lambda raw: raw.update(format_version=99))

    result = _cli(command, out)
    line = _assert_one_error_line(result)
    assert nonblank_lines(result.stderr) == [line] and result.stdout.strip() == ""
    expected = {"missing": "no manifest.json", "invalid-json": "not valid JSON", "format-99": "format 99"}[damage]
    assert expected in line
    if damage == "format-99":
        assert "upgrade" in line
    with pytest.raises(CacheFormatError):
        open_cache(out)


@pytest.mark.fault
@pytest.mark.parametrize("command", ["info", "verify"])
def test_structurally_malformed_manifest_is_one_line_exit_2(command, reference, tmp_path):
    out = copy_cache(reference, tmp_path / "cache")
    rewrite_manifest(out, lambda raw: raw.update(splits=[]))
    line = _assert_one_error_line(_cli(command, out))
    assert "malformed" in line


# --------------------------------------------------------------------------------------------- identity

@pytest.mark.fault
def test_changed_dataset_row_is_refused_with_count(reference, assets, teachers, tmp_path):
    data = shutil.copytree(assets["data"], tmp_path / "data")
    with open(data / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[5]["text"] += " edited"
    write_csv(data / "train.csv", rows)
    out = copy_cache(reference, tmp_path / "cache")
    manifest_bytes = (out / MANIFEST_NAME).read_bytes()

    line = _assert_one_error_line(_cli_build(data, teachers, out))
    assert "1 of 60" in line and "sample 5" in line and "'train'" in line
    assert (out / MANIFEST_NAME).read_bytes() == manifest_bytes


@pytest.mark.fault
def test_changed_teacher_weights_are_refused_naming_the_field(reference, assets, tmp_path):
    changed = make_teacher(tmp_path / "bert-retrained", "bert", seed=7)
    out = copy_cache(reference, tmp_path / "cache")
    cached_hash = load_manifest(out).teachers["bert"].weights_sha256

    line = _assert_one_error_line(_cli_build(assets["data"], {"bert": changed}, out))
    assert "weights_sha256" in line and cached_hash in line and "'bert'" in line
    assert shard_records(out) == shard_records(reference)


@pytest.mark.fault
def test_different_label_set_refused_then_label_map_builds(reference, assets, tmp_path):
    other = make_teacher(tmp_path / "abc", "bert", labels=("a", "b", "c"), seed=3)
    out = copy_cache(reference, tmp_path / "cache")

    line = _assert_one_error_line(_cli_build(assets["data"], {"abc": other}, out))
    assert "['a', 'b', 'c']" in line and str(list(LABELS)) in line and "--label-map" in line
    assert "abc" not in load_manifest(out).teachers

    result = _cli_build(assets["data"], {"abc": other}, out, "--label-map", "abc:a=politics,b=sports,c=tech")
    assert result.exit_code == 0, result.output
    cache = open_cache(out)
    assert cache.teacher_names == ("bert", "distil", "abc")
    assert verify_cache(out).ok
    outputs = cache.teacher_outputs("train", ["abc"])
    assert np.isfinite(outputs.logits.astype(np.float32)).all()
    assert _outputs_equal(out, reference, "bert", "train")


# --------------------------------------------------------------------------------------------- bad data

@pytest.fixture(scope="module")
def nan_teacher(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    directory = make_teacher(tmp_path_factory.mktemp("nan") / "teacher", "bert", seed=4)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(directory)
    return directory


@pytest.mark.fault
def test_nan_logits_refused_listing_sample_ids(nan_teacher, assets, tmp_path):
    out = tmp_path / "cache"
    line = _assert_one_error_line(_cli_build(assets["data"], {"nan": nan_teacher}, out))
    assert "NaN" in line and "sample ids 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in line and "16 sample(s)" in line
    if (out / MANIFEST_NAME).exists():
        assert "nan" not in load_manifest(out).teachers  # no teacher shard was ever listed


@pytest.mark.fault
def test_nan_logits_fresh_cache_commits_no_manifest(nan_teacher, assets, tmp_path):
    out = tmp_path / "cache"
    result = _cli_build(assets["data"], {"nan": nan_teacher}, out)
    assert result.exit_code == 2
    assert not (out / MANIFEST_NAME).exists()


@pytest.mark.fault
def test_empty_split_refused_without_manifest(assets, tmp_path):
    data = tmp_path / "data"
    write_csv(data / "train.csv", make_rows(20, seed=5))
    (data / "validation.csv").write_text("text,label\n")
    out = tmp_path / "cache"
    line = _assert_one_error_line(_cli_build(data, {"bert": assets["bert"]}, out))
    assert "validation" in line and "empty" in line
    assert not (out / MANIFEST_NAME).exists() and not out.exists()


@pytest.mark.fault
def test_one_class_data_builds(assets, tmp_path):
    data = tmp_path / "data"
    for split, count in (("train", 20), ("test", 10)):
        write_csv(data / f"{split}.csv", [{**row, "label": "sports"} for row in make_rows(count, seed=6)])
    out = tmp_path / "cache"
    result = _cli_build(data, {"bert": assets["bert"]}, out, "--label-names", ",".join(LABELS))
    assert result.exit_code == 0, result.output
    cache = open_cache(out)
    assert verify_cache(out).ok
    assert set(cache.inputs("train").labels.tolist()) == {LABELS.index("sports")}
    assert np.isfinite(cache.teacher_outputs("train").logits.astype(np.float32)).all()

    # Without --label-names the data's own label set is {sports}: a clean refusal naming both sets.
    line = _assert_one_error_line(_cli_build(data, {"bert": assets["bert"]}, tmp_path / "other"))
    assert "['sports']" in line and str(list(LABELS)) in line


# ------------------------------------------------------------------------------------------- concurrency

@pytest.mark.fault
def test_second_build_names_the_lock_holder(assets, tmp_path):
    out = tmp_path / "cache"
    with CacheLock(out):
        process = subprocess.run(build_argv(assets["data"], {"bert": assets["bert"]}, out), env=subprocess_env(),
                                 capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    lines = error_lines(process.stderr)
    assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0] and "locked" in lines[0]
    assert not (out / MANIFEST_NAME).exists()


@pytest.mark.fault
def test_losing_the_lock_race_leaves_the_winners_directory(assets, tmp_path, monkeypatch):
    import mtkd_cache.runners.build as build_module
    from mtkd_cache import LockError

    out = tmp_path / "cache"
    winner = []

    class RacingLock(CacheLock):
        """Another builder creates and locks the new directory between our existence check and our lock."""

        def __enter__(self):
            winner.append(CacheLock(self.path.parent).__enter__())
            (self.path.parent / "inputs").mkdir()
            (self.path.parent / "inputs" / "in-progress").write_text("the winner's work")
            return super().__enter__()

    monkeypatch.setattr(build_module, "CacheLock", RacingLock)
    try:
        with pytest.raises(LockError):
            library_build(assets["data"], {"bert": assets["bert"]}, out)
        assert (out / LOCK_NAME).exists(), "the winner's lock file was deleted: a third build could now lock too"
        assert (out / "inputs" / "in-progress").exists()
    finally:
        for lock in winner:
            lock.__exit__(None, None, None)


@pytest.mark.fault
def test_stale_lock_is_taken_over(assets, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "cache"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                             "command": "mtkd-cache build", "since": time.time() - 60}))
    result = _cli_build(assets["data"], {"bert": assets["bert"]}, out)
    assert result.exit_code == 0, result.output
    assert f"stale lock left by pid {dead.pid}" in result.stderr
    assert verify_cache(out).ok and open_cache(out).teacher_names == ("bert",)
    assert (out / LOCK_NAME).read_text() == ""  # released: nobody holds it


@pytest.mark.fault
def test_reader_during_build_sees_consistent_manifests(assets, tmp_path):
    out = tmp_path / "cache"
    process = start_build(assets["data"], {"bert": assets["bert"]}, out, shard_rows=4)
    versions = set()
    try:
        while process.poll() is None:
            try:
                cache = open_cache(out)
                report = verify_cache(out)
            except CacheFormatError as error:
                assert "no manifest.json" in str(error) or "not a directory" in str(error), str(error)
                time.sleep(0.01)
                continue
            assert report.ok, report.problems
            assert report.shards_checked >= len(cache.manifest.shards)  # manifests only ever grow here
            versions.add(len(cache.manifest.shards))
            time.sleep(0.02)  # leave the build a core on small machines
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    assert len(versions) >= 3, f"the reader saw too few manifest versions to mean anything: {sorted(versions)}"
    final = verify_cache(out)
    assert final.ok and final.incomplete == [] and final.stray_files == []
    assert_ids_exact(out)
