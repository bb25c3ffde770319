"""Cache integrity against an adversary (issue #14, items 2, 5, 6, 7): logits that overflow float16, shards
listed as what they are not by a self-consistent manifest, flipped bytes in the manifest, symbolic links.
Hostile manifest fields (item 8) and the format history are in test_manifest.py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers.assets import make_teacher, write_dataset
from helpers.cli import assert_user_error
from helpers.manifests import forge_manifest, shard_entry, write_tiny_cache
from mtkd_cache import (
    BuildConfig,
    CacheFormatError,
    CacheIntegrityError,
    DatasetSpec,
    LockError,
    TeacherError,
    TeacherSpec,
    build_cache,
    open_cache,
    verify_cache,
)
from mtkd_cache.atomic import temporary_path, write_atomically
from mtkd_cache.cache.committer import ShardCommitter
from mtkd_cache.cache.lock import CacheLock
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.cache.shards import outputs_schema, outputs_table
from mtkd_cache.errors import ConfigError
from mtkd_cache.hashing import sha256_bytes
from mtkd_cache.layout import LOCK_NAME, MANIFEST_NAME
from mtkd_cache_cli.app import app

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "d", sizes=(("train", 8), ("test", 4)))


def _build(data, teachers: dict, out, **options):
    config = BuildConfig(dataset=DatasetSpec(source=str(data)),
                         teachers=tuple(TeacherSpec(name, str(path)) for name, path in teachers.items()),
                         out=out, shard_rows=4, **options)
    return build_cache(config)


# ----------------------------------------------------------------------- item 2: float16 overflow

@pytest.fixture(scope="module")
def loud_teacher(tmp_path_factory):
    """A tiny BERT whose head is scaled so its logits exceed float16's 65,504 (finite in float32)."""
    from transformers import BertForSequenceClassification

    directory = make_teacher(tmp_path_factory.mktemp("loud") / "t", "bert", seed=4)
    model = BertForSequenceClassification.from_pretrained(directory)
    with torch.no_grad():
        model.classifier.weight.mul_(1e7)
    model.save_pretrained(directory)
    return directory


def test_logits_that_overflow_float16_are_refused_at_build_naming_the_samples(small_data, loud_teacher, tmp_path):
    out = tmp_path / "c"
    with pytest.raises(TeacherError, match="too large for float16") as raised:
        _build(small_data, {"loud": loud_teacher}, out)
    message = str(raised.value)
    assert "--logits-dtype float32" in message and "sample ids 0, 1, 2, 3" in message and "\n" not in message
    assert not out.exists() or "loud" not in load_manifest(out).teachers  # no inf ever committed

    result = _cli("build", "--dataset", small_data, "--teacher", f"loud={loud_teacher}", "--out", out, "--shard-rows", 4)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # after the progress bar
    assert result.exit_code == 2 and "Traceback" not in result.output and len(errors) == 1, result.output
    assert "too large for float16" in errors[0] and "--logits-dtype float32" in errors[0]

    _build(small_data, {"loud": loud_teacher}, tmp_path / "c32", logits_dtype="float32")
    logits = open_cache(tmp_path / "c32").teacher_outputs("train").logits
    assert np.isfinite(logits).all() and np.abs(logits).max() > 65504  # they really did overflow float16


def test_the_reader_and_verify_refuse_non_finite_cached_logits_an_older_version_wrote(tmp_path):
    out = tmp_path / "c"
    manifest = write_tiny_cache(out)
    bad = shard_entry(json.loads((out / MANIFEST_NAME).read_text()), "train", "t", 4)
    ids = np.arange(4, 6)
    logits = np.array([[np.inf, 0.0], [1.0, 2.0]], dtype=np.float32)  # what 0.1.0 committed for a 70,000 logit
    record = next(s for s in manifest.shards if s.path == bad["path"])
    with ShardCommitter(out, manifest) as committer:
        committer.submit(record, outputs_table(ids, logits, np.array([0, 1]), "float16"), outputs_schema(2, "float16"))

    with pytest.raises(CacheIntegrityError, match="NaN or infinite logits") as raised:
        open_cache(out).teacher_outputs("train")
    assert bad["path"] in str(raised.value) and "sample 4" in str(raised.value) and "\n" not in str(raised.value)
    report = verify_cache(out)
    assert not report.ok and any(bad["path"] in p and "infinite" in p for p in report.problems)


# ------------------------------------------------- item 5: a self-consistent but wrong manifest

@pytest.fixture
def two_teachers(tmp_path):
    out = tmp_path / "c"
    write_tiny_cache(out, shard_rows=4, splits={"train": 8, "validation": 8}, teachers=("t1", "t2"))
    assert verify_cache(out).ok
    return out


def _list_file_as(out, source: str, target: str) -> None:
    """Put the shard at `source` where the manifest lists `target`, and update the manifest to match it."""
    data = (out / source).read_bytes()
    (out / target).write_bytes(data)

    def edit(raw):
        entry = next(s for s in raw["shards"] if s["path"] == target)
        entry.update(bytes=len(data), sha256=sha256_bytes(data))
    forge_manifest(out, edit)


SWAPS = {
    "rows-4-8-as-0-4": ("outputs/t1/train/rows-0000000004-0000000008.parquet",
                        "outputs/t1/train/rows-0000000000-0000000004.parquet", "row_start", "t1"),
    "t2-as-t1": ("outputs/t2/train/rows-0000000000-0000000004.parquet",
                 "outputs/t1/train/rows-0000000000-0000000004.parquet", "teacher_identity", "t1"),
    "validation-inputs-as-train": ("inputs/validation/rows-0000000000-0000000004.parquet",
                                   "inputs/train/rows-0000000000-0000000004.parquet", "split", None),
}


@pytest.mark.fault
@pytest.mark.parametrize("swap", SWAPS)
def test_a_shard_listed_as_another_is_refused_by_the_reader_and_verify(swap, two_teachers):
    source, target, field, teacher = SWAPS[swap]
    _list_file_as(two_teachers, source, target)
    assert load_manifest(two_teachers)  # the manifest itself is consistent: its digest and checksums match

    with pytest.raises(CacheIntegrityError, match="is not the shard the manifest lists") as raised:
        cache = open_cache(two_teachers)
        cache.teacher_outputs("train", [teacher]) if teacher else cache.inputs("train")
    assert target in str(raised.value) and field in str(raised.value)
    report = verify_cache(two_teachers)
    assert not report.ok and any(target in p and field in p for p in report.problems)
    result = _cli("verify", two_teachers)
    assert result.exit_code == 1 and target in result.stdout
    assert_user_error(_cli("experts", two_teachers, "--split", "train"), target, "is not the shard the manifest lists")


@pytest.mark.fault
def test_label_names_reordered_in_the_manifest_only_fail_verify(two_teachers):
    forge_manifest(two_teachers, lambda raw: raw["label_names"].reverse())
    report = verify_cache(two_teachers)
    assert not report.ok and any("split 'train'" in p and "label names reordered" in p for p in report.problems)
    assert _cli("verify", two_teachers).exit_code == 1


@pytest.mark.fault
def test_a_split_fingerprint_that_is_not_its_inputs_fails_verify(two_teachers):
    def swap_fingerprints(raw):
        splits = raw["splits"]
        splits["train"]["fingerprint"], splits["validation"]["fingerprint"] = (splits["validation"]["fingerprint"],
                                                                                 splits["train"]["fingerprint"])
    forge_manifest(two_teachers, swap_fingerprints)
    problems = verify_cache(two_teachers).problems
    assert any("split 'train'" in p for p in problems) and any("split 'validation'" in p for p in problems)


def test_shards_carry_their_identity_readable_without_this_package(two_teachers):
    import pyarrow.parquet as pq

    metadata = pq.read_schema(two_teachers / "outputs/t2/validation/rows-0000000004-0000000008.parquet").metadata
    identity = json.loads(metadata[b"mtkd_cache.shard"])
    manifest = load_manifest(two_teachers)
    assert identity == {"split": "validation", "teacher": "t2", "teacher_identity": manifest.teachers["t2"].identity(),
                        "row_start": 4, "row_end": 8, "dataset_fingerprint": manifest.dataset.fingerprint}


# ------------------------------------------------------------------ item 6: the manifest's digest

def _header_flips(text: str):
    """Every single-character change of a letter or digit before the shard list, keeping its kind."""
    end = text.index('"shards"')
    for position in range(end):
        char = text[position]
        if char.isdigit():
            yield position, "1" if char != "1" else "2"
        elif char.isalpha() and char.isascii():
            yield position, ("b" if char != "b" else "c") if char.islower() else ("B" if char != "B" else "C")


@pytest.mark.fault
def test_every_single_character_flip_in_the_manifest_header_is_refused(tmp_path):
    out = tmp_path / "c"
    write_tiny_cache(out)
    path = out / MANIFEST_NAME
    text = path.read_text()
    from mtkd_cache.cache.manifest import parse_manifest

    flips = list(_header_flips(text))
    damaged = 0
    for position, replacement in flips:
        flipped = text[:position] + replacement + text[position + 1:]
        with pytest.raises(CacheFormatError) as raised:
            parse_manifest(flipped.encode(), str(path))
        damaged += "is damaged" in str(raised.value)
    assert len(flips) > 500 and damaged > 200  # flips that leave every field valid: only the digest catches them


@pytest.mark.fault
@pytest.mark.parametrize("command", ["info", "verify"])
def test_a_flipped_digit_in_a_fingerprint_is_one_line_exit_2(command, tmp_path):
    out = tmp_path / "c"
    manifest = write_tiny_cache(out)
    path = out / MANIFEST_NAME
    fingerprint = manifest.dataset.fingerprint
    flipped = ("0" if fingerprint[0] != "0" else "1") + fingerprint[1:]
    path.write_text(path.read_text().replace(fingerprint, flipped, 1))
    assert_user_error(_cli(command, out), "manifest.json is damaged", "pull a good copy or rebuild")
    with pytest.raises(CacheFormatError, match="is damaged"):
        open_cache(out)


def test_a_manifest_whose_digest_was_removed_is_refused(tmp_path):
    write_tiny_cache(tmp_path / "c")
    path = tmp_path / "c" / MANIFEST_NAME
    raw = json.loads(path.read_text())
    del raw["digest"]
    path.write_text(json.dumps(raw))
    with pytest.raises(CacheFormatError, match="is damaged: it has no digest"):
        load_manifest(tmp_path / "c")


# ------------------------------------------------------------------------ item 7: symbolic links

@pytest.mark.fault
def test_a_lock_that_is_a_symlink_is_never_followed(small_data, assets, tmp_path):
    victim = tmp_path / "outside.txt"
    victim.write_text("precious")
    out = tmp_path / "c"
    write_tiny_cache(out)
    (out / LOCK_NAME).unlink(missing_ok=True)
    (out / LOCK_NAME).symlink_to(victim)

    with pytest.raises(LockError, match="symbolic link"):
        with CacheLock(out):
            pass
    with pytest.raises(LockError, match="symbolic link") as raised:
        _build(small_data, {"bert": assets["bert"]}, tmp_path / "c")
    assert "\n" not in str(raised.value)
    assert victim.read_text() == "precious" and (out / LOCK_NAME).is_symlink()


@pytest.mark.fault
def test_a_planted_temporary_symlink_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "outside.txt"
    victim.write_text("precious")
    target = tmp_path / "cache" / "manifest.json"
    target.parent.mkdir()
    temporary_path(target).symlink_to(victim)
    write_atomically(target, "new content")
    assert target.read_text() == "new content" and not target.is_symlink()
    assert victim.read_text() == "precious"


@pytest.mark.fault
def test_a_symlinked_shard_or_folder_is_refused_by_readers_build_and_verify(small_data, assets, tmp_path):
    out = tmp_path / "c"
    manifest = write_tiny_cache(out)
    shard = next(s for s in manifest.shards if s.teacher == "t")
    outside = tmp_path / "elsewhere.parquet"
    shutil.move(out / shard.path, outside)
    (out / shard.path).symlink_to(outside)  # same bytes, same checksum: only the link is wrong
    with pytest.raises(CacheIntegrityError, match="symbolic link"):
        open_cache(out).teacher_outputs("train")
    report = verify_cache(out)
    assert not report.ok and any(shard.path in p and "symbolic link" in p for p in report.problems)

    (out / shard.path).unlink()
    shutil.move(outside, out / shard.path)
    folder = out / "outputs" / "t"
    shutil.move(folder, tmp_path / "moved")
    folder.symlink_to(tmp_path / "moved", target_is_directory=True)
    report = verify_cache(out)
    assert any(p.startswith("outputs/t is a symbolic link") for p in report.problems)
    before = sorted(p.name for p in (tmp_path / "moved").rglob("*"))
    with pytest.raises(ConfigError, match="symbolic link"):
        _build(small_data, {"bert": assets["bert"]}, out)
    assert sorted(p.name for p in (tmp_path / "moved").rglob("*")) == before
    assert os.path.islink(folder)
