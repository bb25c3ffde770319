"""Cache sharing: push/pull to a local-directory remote and to S3 (moto's server on loopback), corrupted
and interrupted transfers, merge with renames, and the CLI's one-line errors.

Five small caches are built once per module on the conftest dataset with shard_rows 16 (8 input shards and
8 shards per teacher): A (bert), B (distil), AB (both), D (a different `bert`, seed 9) and E (bert on the
same data with one train row edited). Tests never change them: every transfer writes into tmp_path.
S3 goes to one ThreadedMotoServer per module bound to 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import builtins
import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import mtkd_cache.cache.sharing as sharing
from helpers.assets import make_teacher, write_csv
from helpers.faults import (
    assert_ids_exact,
    assert_same_contents,
    copy_cache,
    error_lines,
    flip_byte,
    library_build,
    nonblank_lines,
    shard_records,
    subprocess_env,
)
from helpers.moto_s3 import moto_server, point_s3_at
from mtkd_cache import CacheFormatError, CacheIntegrityError, CacheMismatchError, ConfigError, open_cache, verify_cache
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.cache.sharing import TransferReport, merge, pull, push, read_remote_manifest
from mtkd_cache.layout import CARD_NAME, DECODED_DIR, MANIFEST_NAME
from mtkd_cache_cli.app import app

runner = CliRunner()
SHARDS_PER_PART = 8  # (4 train + 2 validation + 2 test) shards of 16 rows, for the inputs and for each teacher


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def caches(assets, one_torch_thread, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sharing")
    bert9 = make_teacher(root / "bert9", "bert", seed=9)
    edited = shutil.copytree(assets["data"], root / "data-edited")
    with open(edited / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[3]["text"] += " edited"
    write_csv(edited / "train.csv", rows)
    plans = {
        "A": (assets["data"], {"bert": assets["bert"]}),
        "B": (assets["data"], {"distil": assets["distil"]}),
        "AB": (assets["data"], {"bert": assets["bert"], "distil": assets["distil"]}),
        "D": (assets["data"], {"bert": bert9}),
        "E": (edited, {"bert": assets["bert"]}),
    }
    built = {}
    for name, (data, teachers) in plans.items():
        built[name] = root / name
        library_build(data, teachers, built[name])  # SHARD_ROWS = 16
    assert len(load_manifest(built["A"]).shards) == 2 * SHARDS_PER_PART
    return built


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def _assert_user_error(result, *fragments: str, alone: bool = True) -> str:
    """Exit 2, exactly one `error:` line, no traceback; return that line. `alone`: nothing else on stderr
    (push and pull draw their byte progress bar on stderr before the error, so they pass alone=False)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert not alone or nonblank_lines(result.stderr) == lines, result.stderr
    assert not re.search(r"[A-Za-z]+Error\b", result.stderr.replace(lines[0], "")), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _total_bytes(cache: Path, teacher: str | None = "__all__") -> int:
    return sum(size for size, _ in shard_records(cache, teacher).values())


def _files(root: Path) -> dict[str, bytes]:
    """Every file under `root` but the manifest (timestamps differ between runs), the lock file, a pushed
    cache's card (it names the URL pushed to; tests/cache/test_card.py checks it) and the decoded sidecars a
    read leaves (derived, never shared: cache/sidecar.py)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST_NAME, ".lock", CARD_NAME)
            and p.relative_to(root).parts[0] != DECODED_DIR}


def _hidden(root: Path) -> list[str]:
    """Leftover temporaries: shard temps (.tmp-*) and manifest temps (.manifest.json.tmp-*)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*") if p.name != ".lock")


def _same_outputs(cache: Path, teacher: str, reference: Path, reference_teacher: str | None = None) -> None:
    got, want = open_cache(cache), open_cache(reference)
    for split in want.split_names:
        a = got.teacher_outputs(split, [teacher])
        b = want.teacher_outputs(split, [reference_teacher or teacher])
        assert a.logits.dtype == b.logits.dtype
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.preds, b.preds), (teacher, split)


def _fail_after(count: int, original, error: BaseException):
    """`original` for the first `count` calls, then `error`."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) > count:
            raise error
        return original(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------- a local-directory remote

def test_local_remote_round_trip(caches, tmp_path):
    a, b = caches["A"], caches["B"]
    remote = tmp_path / "remote"
    total_a = _total_bytes(a)

    first = push(a, str(remote))
    assert isinstance(first, TransferReport)
    assert (first.shards_moved, first.shards_present) == (2 * SHARDS_PER_PART, 0)
    assert first.bytes_moved == first.bytes_total == total_a
    assert shard_records(remote) == shard_records(a)
    assert _files(remote) == _files(a) and _hidden(remote) == []
    assert (remote / CARD_NAME).read_text().startswith("---\n") and not (a / CARD_NAME).exists()

    second = push(a, str(remote))
    assert (second.shards_moved, second.bytes_moved) == (0, 0)
    assert second.shards_present == 2 * SHARDS_PER_PART and second.bytes_total == total_a

    local = tmp_path / "pulled"
    pulled = pull(remote.as_uri(), local)  # file:// URL this time
    assert pulled.bytes_moved == pulled.bytes_total == total_a and pulled.shards_moved == 2 * SHARDS_PER_PART
    report = verify_cache(local)
    assert report.ok and report.stray_files == [] and report.incomplete == []
    assert_same_contents(local, a)
    assert shard_records(local) == shard_records(a)

    again = pull(str(remote), local)
    assert (again.shards_moved, again.bytes_moved) == (0, 0) and again.shards_present == 2 * SHARDS_PER_PART

    # B shares A's inputs shards byte for byte: only its distil shards travel, and bert stays listed.
    with_b = push(b, str(remote))
    assert with_b.shards_present == SHARDS_PER_PART and with_b.shards_moved == SHARDS_PER_PART
    assert with_b.bytes_moved == _total_bytes(b, "distil")
    remote_manifest = read_remote_manifest(str(remote))
    assert list(remote_manifest.teachers) == ["bert", "distil"]
    assert shard_records(remote) == {**shard_records(a), **shard_records(b)}

    only = tmp_path / "only-distil"
    _ok(_cli("pull", remote, only, "--teachers", "distil"))
    manifest = load_manifest(only)
    assert list(manifest.teachers) == ["distil"]
    assert {r.teacher for r in manifest.shards} == {None, "distil"}
    assert not (only / "outputs" / "bert").exists()
    assert {p.split("/")[0] + "/" + p.split("/")[1] for p in _files(only)} == {
        "inputs/train", "inputs/validation", "inputs/test", "outputs/distil"}
    assert set(_files(only)) == {r.path for r in manifest.shards}
    assert verify_cache(only).ok
    assert_same_contents(only, b)

    # Completing the bert-only copy moves exactly the distil shards; the result reads like a two-teacher build.
    completed = pull(str(remote), local)
    assert completed.bytes_moved == _total_bytes(b, "distil") and completed.shards_present == 2 * SHARDS_PER_PART
    assert verify_cache(local).ok
    assert_same_contents(local, caches["AB"])

    print(f"\nbytes moved: first push {first.bytes_moved:,}, second push {second.bytes_moved:,}, "
          f"pull into empty {pulled.bytes_moved:,}, pull into complete {again.bytes_moved:,} "
          f"(cache A: {2 * SHARDS_PER_PART} shards, {total_a:,} bytes)")


def test_cli_push_and_pull_report_bytes(caches, tmp_path):
    remote, local = tmp_path / "remote", tmp_path / "local"
    total = _total_bytes(caches["A"])
    result = _ok(_cli("push", caches["A"], remote))
    assert f"pushed {2 * SHARDS_PER_PART} shard(s), {total:,} bytes" in result.stdout
    result = _ok(_cli("push", caches["A"], remote))
    assert "pushed 0 shard(s), 0 bytes" in result.stdout and f"{2 * SHARDS_PER_PART} already there" in result.stdout
    result = _ok(_cli("pull", remote.as_uri(), local))
    assert f"pulled {2 * SHARDS_PER_PART} shard(s), {total:,} bytes" in result.stdout
    assert _ok(_cli("verify", local)).stdout.rstrip().endswith("OK")
    info = json.loads(_ok(_cli("info", remote.as_uri(), "--json")).stdout)
    assert [t["name"] for t in info["teachers"]] == ["bert"] and info["total_bytes"] == total


# ------------------------------------------------------------------------------------------ S3 (moto)

@pytest.fixture(scope="module")
def moto_endpoint():
    """One moto S3 server per module on 127.0.0.1 with a bucket `mtkd`; stopped at module end."""
    pytest.importorskip("s3fs")
    with moto_server("mtkd") as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """The environment a user's push/pull to s3:// would see, pointed at the loopback server."""
    import s3fs

    point_s3_at(moto_endpoint, monkeypatch, tmp_path)
    fs = s3fs.S3FileSystem()
    assert fs.endpoint_url == moto_endpoint
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_push_info_pull(caches, s3, tmp_path, request):
    a = caches["A"]
    url = f"s3://mtkd/{request.node.name}/cache"
    total = _total_bytes(a)

    first = push(a, url)
    assert first.bytes_moved == total and first.shards_moved == 2 * SHARDS_PER_PART
    keys = {k.split("/cache/", 1)[1] for k in s3.find(f"mtkd/{request.node.name}/cache")}
    assert keys == set(shard_records(a)) | {MANIFEST_NAME, CARD_NAME}  # no temporaries left behind

    info = json.loads(_ok(_cli("info", url, "--json")).stdout)
    assert info["path"] == url and [t["name"] for t in info["teachers"]] == ["bert"]
    assert info["shards"] == 2 * SHARDS_PER_PART and info["total_bytes"] == total
    assert all(split["teachers_complete"] == ["bert"] for split in info["splits"])

    local = tmp_path / "pulled"
    pulled = pull(url, local)
    assert pulled.bytes_moved == total
    assert verify_cache(local).ok
    assert_same_contents(local, a)
    assert shard_records(local) == shard_records(a)

    again = push(a, url)
    assert (again.bytes_moved, again.shards_moved, again.shards_present) == (0, 0, 2 * SHARDS_PER_PART)
    assert pull(url, local).bytes_moved == 0

    # Through the CLI: B adds distil next to bert, and `info` lists both.
    result = _ok(_cli("push", caches["B"], url))
    assert f"pushed {SHARDS_PER_PART} shard(s), {_total_bytes(caches['B'], 'distil'):,} bytes" in result.stdout
    info = json.loads(_ok(_cli("info", url, "--json")).stdout)
    assert [t["name"] for t in info["teachers"]] == ["bert", "distil"]


def test_s3_empty_prefix_is_one_line_error(s3, request, tmp_path):
    url = f"s3://mtkd/{request.node.name}/nothing-here"
    _assert_user_error(_cli("info", url), url, "no manifest.json")
    _assert_user_error(_cli("pull", url, tmp_path / "dest"), url, "no manifest.json", alone=False)
    assert not (tmp_path / "dest").exists()


# ------------------------------------------------------------------------------------ corrupted remote

@pytest.mark.parametrize("destination", ["fresh", "existing"])
def test_corrupted_remote_shard_is_refused(destination, caches, tmp_path):
    remote = tmp_path / "remote"
    push(caches["A"], str(remote))
    push(caches["B"], str(remote))
    bad = load_manifest(caches["B"]).shards_of("train", "distil")[1].path  # a shard A's copy lacks
    size = (remote / bad).stat().st_size
    flip_byte(remote / bad, size // 2)
    assert (remote / bad).stat().st_size == size

    local = tmp_path / "local"
    before = None
    if destination == "existing":
        copy_cache(caches["A"], local)
        before = (local / MANIFEST_NAME).read_bytes()
    with pytest.raises(CacheIntegrityError) as raised:
        pull(str(remote), local)
    assert f"{remote}/{bad}" in str(raised.value) and "corrupt" in str(raised.value)
    if destination == "fresh":
        assert not (local / MANIFEST_NAME).exists()
        with pytest.raises(CacheFormatError):
            open_cache(local)
    else:
        assert (local / MANIFEST_NAME).read_bytes() == before
        assert verify_cache(local).ok
        assert_same_contents(local, caches["A"])
    # The CLI says the same in one line and still commits nothing.
    _assert_user_error(_cli("pull", remote, local), f"{remote}/{bad}", "corrupt", alone=False)
    assert (not (local / MANIFEST_NAME).exists()) if before is None else (local / MANIFEST_NAME).read_bytes() == before


# ------------------------------------------------------------------------------------ interrupted push

def _interrupt_push(monkeypatch, mode: str, after: int):
    """Make push fail on the (after+1)-th shard: before reading it ("read") or after its upload ("mv")."""
    if mode == "read":
        monkeypatch.setattr(sharing, "read_verified_bytes",
                            _fail_after(after, sharing.read_verified_bytes, ConnectionResetError("link dropped")))
    else:
        from fsspec.implementations.local import LocalFileSystem

        monkeypatch.setattr(LocalFileSystem, "mv",
                            _fail_after(after, LocalFileSystem.mv, ConnectionResetError("link dropped")))


@pytest.mark.parametrize("mode", ["read", "mv"])
def test_interrupted_push_keeps_previous_manifest_and_resumes(mode, caches, tmp_path, monkeypatch):
    a, b = caches["A"], caches["B"]
    remote, reference = tmp_path / "remote", tmp_path / "reference"
    push(b, str(remote))
    push(b, str(reference))
    push(a, str(reference))  # the uninterrupted result to compare against
    previous = (remote / MANIFEST_NAME).read_bytes()

    k = 3
    _interrupt_push(monkeypatch, mode, k)
    with pytest.raises(ConnectionResetError):
        push(a, str(remote))
    monkeypatch.undo()

    assert (remote / MANIFEST_NAME).read_bytes() == previous
    check = tmp_path / "check"
    pull(str(remote), check)  # the previous manifest and everything it lists still pull cleanly
    assert verify_cache(check).ok
    assert_same_contents(check, b)
    bert = [r for r in load_manifest(a).shards if r.teacher == "bert"]  # B's inputs are A's: only these move
    landed = [r for r in bert if (remote / r.path).exists()]
    assert len(landed) == k  # the shards renamed before the failure
    missing = sum(r.bytes for r in bert if not (remote / r.path).exists())

    rerun = push(a, str(remote))
    assert rerun.bytes_moved == missing  # only what is not yet at its final path, nothing twice
    assert rerun.shards_moved == len(bert) - k and rerun.shards_present == 2 * SHARDS_PER_PART - rerun.shards_moved
    assert shard_records(remote) == shard_records(reference)
    assert read_remote_manifest(str(remote)).teachers.keys() == read_remote_manifest(str(reference)).teachers.keys()
    visible = {p: data for p, data in _files(remote).items() if not Path(p).name.startswith(".")}
    assert visible == _files(reference)
    assert _hidden(remote) == []  # a failed upload removes its temporary


def test_failed_push_leaves_no_orphan_temporary(caches, tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    _interrupt_push(monkeypatch, "mv", 2)
    with pytest.raises(ConnectionResetError):
        push(caches["A"], str(remote))
    monkeypatch.undo()
    push(caches["A"], str(remote))
    assert _hidden(remote) == []


_KILLING_PUSH = """
import os, signal, sys
limit = int(sys.argv[1])
from fsspec.implementations.local import LocalFileSystem
original, calls = LocalFileSystem.mv, []
def mv(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > limit:
        os.kill(os.getpid(), signal.SIGKILL)  # uploaded to a temporary name, not yet renamed
    return original(self, *args, **kwargs)
LocalFileSystem.mv = mv
sys.argv = ["mtkd-cache", "push", *sys.argv[2:]]
from mtkd_cache_cli.app import main
main()
"""


@pytest.mark.fault
def test_sigkilled_push_process_then_rerun(caches, tmp_path):
    a = caches["A"]
    remote, reference = tmp_path / "remote", tmp_path / "reference"
    push(a, str(reference))
    k = 5
    process = subprocess.run([sys.executable, "-c", _KILLING_PUSH, str(k), str(a), str(remote)],
                             env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    assert not (remote / MANIFEST_NAME).exists() and read_remote_manifest(str(remote)) is None
    landed = [p for p in shard_records(a) if (remote / p).exists()]
    assert len(landed) == k
    assert len(_hidden(remote)) == 1  # the upload the kill interrupted
    missing = sum(size for path, (size, _) in shard_records(a).items() if not (remote / path).exists())

    rerun = push(a, str(remote))
    assert rerun.bytes_moved == missing and rerun.shards_present == k
    assert shard_records(remote) == shard_records(reference)
    visible = {p: data for p, data in _files(remote).items() if not Path(p).name.startswith(".")}
    assert visible == _files(reference)
    local = tmp_path / "local"
    pull(str(remote), local)
    assert_same_contents(local, a)


# ------------------------------------------------------------------------------------ interrupted pull

@pytest.mark.parametrize("destination", ["fresh", "existing"])
def test_interrupted_pull_commits_nothing_and_resumes(destination, caches, tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    push(caches["AB"], str(remote))
    local = tmp_path / "local"
    before = None
    if destination == "existing":
        copy_cache(caches["A"], local)
        before = (local / MANIFEST_NAME).read_bytes()
    wanted = shard_records(caches["AB"])

    k = 5
    monkeypatch.setattr(sharing, "write_bytes_atomically",
                        _fail_after(k, sharing.write_bytes_atomically, ConnectionResetError("link dropped")))
    with pytest.raises(ConnectionResetError):
        pull(str(remote), local)
    monkeypatch.undo()

    if before is None:
        assert not (local / MANIFEST_NAME).exists()
    else:
        assert (local / MANIFEST_NAME).read_bytes() == before
        assert verify_cache(local).ok
        assert_same_contents(local, caches["A"])
    assert _hidden(local) == []
    present = [p for p in wanted if (local / p).exists()]
    expected_present = k if before is None else SHARDS_PER_PART * 2 + k
    assert len(present) == expected_present
    missing = sum(size for path, (size, _) in wanted.items() if not (local / path).exists())

    rerun = pull(str(remote), local)
    assert rerun.bytes_moved == missing  # only what is not yet at its final path, nothing twice
    assert rerun.shards_present == expected_present
    report = verify_cache(local)
    assert report.ok and report.stray_files == [] and report.incomplete == []
    assert shard_records(local) == wanted
    assert_same_contents(local, caches["AB"])


# ---------------------------------------------------------------------------------------------- merge

def test_merge_two_teachers(caches, tmp_path):
    a, b = caches["A"], caches["B"]
    out = tmp_path / "C"
    result = _ok(_cli("merge", a, b, "--out", out))
    assert f"{3 * SHARDS_PER_PART} shards" in result.stdout
    cache = open_cache(out)
    assert cache.teacher_names == ("bert", "distil")
    report = verify_cache(out)
    assert report.ok and report.incomplete == [] and report.stray_files == []
    assert report.shards_checked == 3 * SHARDS_PER_PART
    assert_ids_exact(out)
    _same_outputs(out, "bert", a)
    _same_outputs(out, "distil", b)
    assert_same_contents(out, caches["AB"])
    assert shard_records(out) == shard_records(caches["AB"])

    # Readable without this package.
    import datasets
    import polars as pl

    manifest = load_manifest(out)
    bert_files = [str(out / r.path) for r in manifest.shards_of("train", "bert")]
    distil_files = [str(out / r.path) for r in manifest.shards_of("train", "distil")]
    loaded = datasets.load_dataset("parquet", data_files={"train": distil_files},
                                   cache_dir=str(tmp_path / "hf"))["train"]
    assert loaded.num_rows == 60
    logits = loaded.with_format("numpy", dtype=np.float16)[:]["logits"]
    assert np.array_equal(logits, open_cache(b).teacher_outputs("train").logits[:, 0])
    frame = pl.concat([pl.read_parquet(p) for p in bert_files])
    assert frame["sample_id"].to_list() == list(range(60))
    assert np.array_equal(frame["logits"].to_numpy(), open_cache(a).teacher_outputs("train").logits[:, 0])
    inputs = pl.concat([pl.read_parquet(str(out / r.path)) for r in manifest.shards_of("train", None)])
    assert inputs["text"].to_list() == open_cache(a).inputs("train").texts


def test_merge_refuses_other_data_naming_the_fingerprint(caches, tmp_path):
    out = tmp_path / "C"
    _assert_user_error(_cli("merge", caches["A"], caches["E"], "--out", out), "dataset fingerprint", str(caches["E"]))
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(CacheMismatchError, match="dataset fingerprint"):
        merge([caches["B"], caches["E"]], tmp_path / "C2")


def test_merge_same_name_other_teacher_needs_rename(caches, tmp_path):
    a, d = caches["A"], caches["D"]
    out = tmp_path / "C"
    _assert_user_error(_cli("merge", a, d, "--out", out), "'bert'", "weights_sha256", "--rename")
    assert not out.exists() or not any(out.iterdir())

    _ok(_cli("merge", a, d, "--out", out, "--rename", "2:bert=bert9"))
    manifest = load_manifest(out)
    assert list(manifest.teachers) == ["bert", "bert9"]
    assert manifest.teachers["bert9"].weights_sha256 == load_manifest(d).teachers["bert"].weights_sha256
    assert manifest.teachers["bert"].weights_sha256 == load_manifest(a).teachers["bert"].weights_sha256
    bert9 = [r for r in manifest.shards if r.teacher == "bert9"]
    assert len(bert9) == SHARDS_PER_PART and all(r.path.startswith("outputs/bert9/") for r in bert9)
    assert sorted(p for p in _files(out) if p.startswith("outputs/bert9/")) == sorted(r.path for r in bert9)
    report = verify_cache(out)
    assert report.ok and report.stray_files == [] and report.incomplete == []
    _same_outputs(out, "bert", a)
    _same_outputs(out, "bert9", d, "bert")
    assert shard_records(out, "bert") == shard_records(a, "bert")


def test_merge_with_itself_keeps_one_copy(caches, tmp_path):
    a = caches["A"]
    out = tmp_path / "C"
    report = merge([a, a], out)
    assert report.shards == 2 * SHARDS_PER_PART and list(report.teachers) == ["bert"]
    assert list(load_manifest(out).teachers) == ["bert"]
    assert shard_records(out) == shard_records(a)
    assert _files(out) == _files(a)
    assert verify_cache(out).ok


def test_merge_rename_to_a_path_is_refused(caches, tmp_path):
    out = tmp_path / "nested" / "C"
    result = _cli("merge", caches["A"], caches["D"], "--out", out, "--rename", "2:bert=x/../../../../escaped")
    escaped = tmp_path / "escaped"
    assert not escaped.exists(), f"merge wrote {sorted(p.name for p in escaped.rglob('*'))[:2]} outside --out"
    _assert_user_error(result, "x/../../../../escaped")


def test_pull_refuses_manifest_paths_outside_the_cache(caches, tmp_path):
    remote = tmp_path / "shared" / "bucket" / "remote"
    push(caches["A"], str(remote))
    raw = json.loads((remote / MANIFEST_NAME).read_text())
    shard = raw["shards"][0]
    outside = "../../escaped.parquet"  # the remote serves it from shared/escaped.parquet
    shutil.copy(remote / shard["path"], tmp_path / "shared" / "escaped.parquet")
    shard["path"] = outside
    (remote / MANIFEST_NAME).write_text(json.dumps(raw))

    local = tmp_path / "home" / "caches" / "local"
    result = _cli("pull", remote, local)
    assert not (tmp_path / "home" / "escaped.parquet").exists(), "pull wrote a file outside its cache directory"
    _assert_user_error(result, outside, alone=False)


# ------------------------------------------------------------------------------------------ CLI errors

def test_cli_errors_are_one_line_exit_2(caches, tmp_path):
    a = caches["A"]
    empty = tmp_path / "empty"
    empty.mkdir()
    not_a_cache = tmp_path / "not-a-cache"
    (not_a_cache / "inputs").mkdir(parents=True)

    _assert_user_error(_cli("pull", empty, tmp_path / "dest"), str(empty), "no manifest.json", alone=False)
    assert not (tmp_path / "dest").exists()
    _assert_user_error(_cli("push", not_a_cache, tmp_path / "remote"), str(not_a_cache), "no manifest.json", alone=False)
    assert not (tmp_path / "remote").exists()
    _assert_user_error(_cli("push", a, "nosuchscheme://bucket/x"), "nosuchscheme://bucket/x", alone=False)

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    _assert_user_error(_cli("merge", a, caches["B"], "--out", occupied), str(occupied), "not empty")
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    for bad in ("bert=bert9", "2:bert", "2:=x", "3:bert=x", "0:bert=x", "x:bert=y"):
        _assert_user_error(_cli("merge", a, caches["D"], "--out", tmp_path / "C", "--rename", bad), bad, "N:OLD=NEW")
    _assert_user_error(_cli("merge", a, caches["D"], "--out", tmp_path / "C", "--rename", "2:nosuch=x"), "nosuch")
    _assert_user_error(_cli("merge", a, "--out", tmp_path / "C"), "at least two")
    assert not (tmp_path / "C").exists()

    _assert_user_error(_cli("info", empty.as_uri()), empty.as_uri(), "no manifest.json")
    _assert_user_error(_cli("info", (tmp_path / "never-made").as_uri(), "--json"), "no manifest.json")
    _assert_user_error(_cli("info", empty), str(empty), "no manifest.json")


def test_cli_refusals_leave_destinations_unchanged(caches, tmp_path):
    remote = tmp_path / "remote"
    push(caches["A"], str(remote))
    remote_manifest = (remote / MANIFEST_NAME).read_bytes()
    # Another `bert` onto a remote holding one: refused naming the teacher, nothing uploaded.
    _assert_user_error(_cli("push", caches["D"], remote), "'bert'", "weights_sha256", alone=False)
    assert (remote / MANIFEST_NAME).read_bytes() == remote_manifest
    assert set(_files(remote)) == set(shard_records(caches["A"]))
    # Other data onto a remote: refused naming the fingerprint.
    _assert_user_error(_cli("push", caches["E"], remote), "dataset fingerprint", alone=False)
    assert (remote / MANIFEST_NAME).read_bytes() == remote_manifest

    # Pulling into a cache of other data, or an unknown teacher: refused, local cache untouched.
    local = copy_cache(caches["E"], tmp_path / "local")
    local_manifest = (local / MANIFEST_NAME).read_bytes()
    _assert_user_error(_cli("pull", remote, local), "dataset fingerprint", alone=False)
    assert (local / MANIFEST_NAME).read_bytes() == local_manifest
    _assert_user_error(_cli("pull", remote, tmp_path / "fresh", "--teachers", "bert,nosuch"), "nosuch", alone=False)
    assert not (tmp_path / "fresh").exists()


def test_a_pulled_cache_reads_without_this_package(caches, tmp_path):
    import datasets
    import polars as pl

    remote, pulled = tmp_path / "remote", tmp_path / "pulled"
    push(caches["A"], str(remote))
    pull(str(remote), pulled)
    manifest = load_manifest(pulled)
    files = [str(pulled / r.path) for r in manifest.shards_of("test", "bert")]
    loaded = datasets.load_dataset("parquet", data_files={"test": files}, cache_dir=str(tmp_path / "hf"))["test"]
    expected = open_cache(caches["A"]).teacher_outputs("test").logits[:, 0]
    assert np.array_equal(loaded.with_format("numpy", dtype=np.float16)[:]["logits"], expected)
    assert np.array_equal(pl.concat([pl.read_parquet(p) for p in files])["logits"].to_numpy(), expected)


class _Recorder:
    """A ProgressEvents that keeps what it was told."""

    def __init__(self):
        self.tasks, self.advanced, self.notes = [], 0, []

    def task(self, description, total, unit="rows"):
        self.tasks.append((description, total, unit))

    def advance(self, rows):
        self.advanced += rows

    def note(self, message):
        self.notes.append(message)


def test_push_and_pull_report_progress_as_one_task_in_bytes(tmp_path):
    from helpers.manifests import write_tiny_cache

    manifest = write_tiny_cache(tmp_path / "c")
    total = sum(record.bytes for record in manifest.shards)
    pushed, pulled = _Recorder(), _Recorder()
    push(tmp_path / "c", str(tmp_path / "remote"), pushed)
    pull(str(tmp_path / "remote"), tmp_path / "back", events=pulled)
    assert pushed.tasks == [(f"push → {tmp_path / 'remote'}", total, "bytes")] and pushed.advanced == total
    assert pulled.tasks == [(f"pull ← {tmp_path / 'remote'}", total, "bytes")] and pulled.advanced == total
    again = _Recorder()
    push(tmp_path / "c", str(tmp_path / "remote"), again)
    assert again.tasks == [(f"push → {tmp_path / 'remote'}", 0, "bytes")] and again.advanced == 0


# ------------------------------------------------- hardening (#14): temporaries, foreign and unwritable destinations

@pytest.mark.fault
def test_reruns_after_killed_push_and_pull_remove_their_temporaries(caches, tmp_path):
    a = caches["A"]
    remote, local = tmp_path / "remote", tmp_path / "local"
    killed = subprocess.run([sys.executable, "-c", _KILLING_PUSH, "5", str(a), str(remote)],
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(_hidden(remote)) == 1  # the upload the kill interrupted
    push(a, str(remote))
    assert _hidden(remote) == []
    remote_report = verify_cache(remote)
    assert remote_report.ok and remote_report.stray_files == []

    # A pull killed between writing a shard's temporary and renaming it (the shard fault point).
    killed = subprocess.run([sys.executable, "-m", "mtkd_cache", "pull", str(remote), str(local)],
                            env=subprocess_env("shard_written:4"), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len([p for p in _hidden(local) if Path(p).name.startswith(".tmp-")]) == 1
    pull(str(remote), local)
    assert _hidden(local) == []
    report = verify_cache(local)
    assert report.ok and report.stray_files == [] and report.incomplete == []
    assert_same_contents(local, a)


def _temporary_at(path: Path, age_seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))
    return path


def test_a_transfer_removes_only_temporaries_older_than_itself(caches, tmp_path):
    """Another transfer's in-flight temporary (newer than this one's start) stays; a killed one's goes."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    push(caches["A"], str(remote))
    pull(str(remote), local)
    folder = "outputs/bert/train"
    remote_old = _temporary_at(remote / folder / ".tmp-rows-x.parquet.0badc0de", 3600)
    remote_new = _temporary_at(remote / folder / ".tmp-rows-y.parquet.1badc0de", -3600)
    local_old = _temporary_at(local / folder / ".tmp-rows-x.parquet.4242", 3600)
    local_new = _temporary_at(local / folder / ".tmp-rows-y.parquet.4243", -3600)
    push(caches["A"], str(remote))
    pull(str(remote), local)
    assert not remote_old.exists() and remote_new.exists()
    assert not local_old.exists() and local_new.exists()


def test_pull_refuses_a_directory_that_is_not_a_cache(caches, tmp_path):
    remote = tmp_path / "remote"
    push(caches["A"], str(remote))
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    _assert_user_error(_cli("pull", remote, foreign), str(foreign), "holds no cache", "holiday.jpg", alone=False)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]


def test_pull_and_merge_refuse_a_file_as_destination(caches, tmp_path):
    remote = tmp_path / "remote"
    push(caches["A"], str(remote))
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    _assert_user_error(_cli("pull", remote, file), str(file), "is a file", alone=False)
    _assert_user_error(_cli("merge", caches["A"], caches["B"], "--out", file), str(file), "is a file")
    assert file.read_text() == "mine"


def _refusing_open(error: int):
    """An `open` for mtkd_cache.atomic whose shard writes fail like a full (ENOSPC: after creating the
    temporary) or read-only/forbidden (EACCES) destination."""
    def fake_open(file, mode="r", *args, **kwargs):
        if ".parquet" in Path(file).name and "w" in mode:
            if error == errno.ENOSPC:
                builtins.open(file, mode, *args, **kwargs).close()
            raise OSError(error, os.strerror(error), str(file))
        return builtins.open(file, mode, *args, **kwargs)
    return fake_open


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "read-only"])
def test_unwritable_pull_and_merge_destinations_are_one_line_errors(error, caches, tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    push(caches["A"], str(remote))
    existing = copy_cache(caches["B"], tmp_path / "existing")
    before = (existing / MANIFEST_NAME).read_bytes()
    monkeypatch.setattr("mtkd_cache.atomic.open", _refusing_open(error), raising=False)

    fresh = tmp_path / "fresh"
    _assert_user_error(_cli("pull", remote, fresh), os.strerror(error), "re-run", alone=False)
    assert not fresh.exists()  # nothing half-written: the directory pull made is gone again
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_user_error(_cli("pull", remote, empty), os.strerror(error), alone=False)
    assert list(empty.iterdir()) == []
    _assert_user_error(_cli("pull", remote, existing), os.strerror(error), alone=False)
    assert (existing / MANIFEST_NAME).read_bytes() == before and _hidden(existing) == []
    out = tmp_path / "merged"
    _assert_user_error(_cli("merge", caches["A"], caches["B"], "--out", out), os.strerror(error))
    assert not out.exists()
    monkeypatch.undo()
    assert verify_cache(existing).ok


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "read-only"])
def test_unwritable_push_destination_is_a_one_line_error(error, caches, tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    remote = tmp_path / "remote"
    push(caches["B"], str(remote))
    before = (remote / MANIFEST_NAME).read_bytes()
    original = LocalFileSystem.pipe_file

    def refusing_pipe_file(self, path, value, *args, **kwargs):
        if error == errno.ENOSPC:  # part of the upload lands, then the disk is full
            original(self, path, value[: len(value) // 2], *args, **kwargs)
        raise OSError(error, os.strerror(error), str(path))

    monkeypatch.setattr(LocalFileSystem, "pipe_file", refusing_pipe_file)
    _assert_user_error(_cli("push", caches["A"], remote), os.strerror(error), "re-run push", alone=False)
    monkeypatch.undo()
    assert (remote / MANIFEST_NAME).read_bytes() == before
    assert _hidden(remote) == []  # the failed upload's temporary is removed
    assert verify_cache(remote).ok


def test_push_to_a_directory_remote_that_refuses_its_lock_file_is_a_one_line_error(caches, tmp_path, monkeypatch):
    # A read-only remote directory refuses the lock file first; simulated, as root ignores permissions.
    def refuse(file, *_args, **_kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))

    remote = tmp_path / "remote"
    remote.mkdir()
    monkeypatch.setattr("mtkd_cache.cache.lock.os.open", refuse)  # the lock file is opened with os.open (O_NOFOLLOW)
    _assert_user_error(_cli("push", caches["A"], remote), os.strerror(errno.EACCES), "permissions", alone=False)
    assert list(remote.iterdir()) == []


def test_s3_push_removes_stale_temporaries_of_a_killed_push(caches, s3, monkeypatch, request):
    import mtkd_cache.cache.remote as remote_module

    url = f"s3://mtkd/{request.node.name}/cache"
    push(caches["A"], url)
    stale = f"mtkd/{request.node.name}/cache/outputs/bert/train/.tmp-rows-x.parquet.0badc0de"
    s3.pipe_file(stale, b"partial")
    monkeypatch.setattr(remote_module, "OBJECT_STORE_GRACE_SECONDS", 0.0)  # no 5 s wait for the clock-skew margin
    time.sleep(1.1)  # LastModified is whole seconds
    push(caches["A"], url)
    s3.invalidate_cache()
    assert not s3.exists(stale)
    assert not [k for k in s3.find(f"mtkd/{request.node.name}/cache") if "/.tmp-" in k]


def test_a_backend_without_a_guard_says_so(tmp_path):
    from helpers.manifests import write_tiny_cache

    write_tiny_cache(tmp_path / "c")
    events = _Recorder()
    push(tmp_path / "c", f"memory://{tmp_path.name}/remote", events)
    assert any("one place at a time" in note for note in events.notes), events.notes
    quiet = _Recorder()
    push(tmp_path / "c", str(tmp_path / "remote"), quiet)
    assert quiet.notes == []


def test_pull_refuses_a_destination_whose_shard_folder_is_a_link(caches, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    destination = tmp_path / "dest"
    destination.mkdir()
    (destination / "outputs").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        pull(str(caches["A"]), destination)
    assert list(outside.iterdir()) == []
