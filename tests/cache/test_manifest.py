"""manifest.py: every field of a parsed manifest is validated, local or pulled (issue #14 item 8), and the
format history holds: format 1 caches (tests/cache/fixtures/v1, written by 0.1.0) still read, and a build
upgrades one in place (RELIABILITY 13)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.assets import make_teacher
from helpers.cli import assert_user_error
from helpers.manifests import forge_manifest, write_tiny_cache
from mtkd_cache import (
    BuildConfig,
    CacheFormatError,
    DatasetSpec,
    TeacherSpec,
    build_cache,
    open_cache,
    summarize,
    verify_cache,
)
from mtkd_cache.cache.manifest import FORMAT_VERSION, load_manifest, manifest_digest
from mtkd_cache.cache.sharing import pull, push
from mtkd_cache.layout import MANIFEST_NAME
from mtkd_cache_cli.app import app

runner = CliRunner()
V1_FIXTURE = Path(__file__).parent / "fixtures" / "v1"


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _rename_teacher(raw, new):
    raw["teachers"][new] = {**raw["teachers"].pop("t"), "name": new}


def _rename_split(raw, new):
    raw["splits"][new] = raw["splits"].pop("train")


# Each edit, made with the digest recomputed (so only validation can refuse it), and the field it must name.
HOSTILE = {
    "rows-10^12": (lambda raw: raw["splits"]["train"].update(rows=10**12), "splits.train.rows"),
    "rows-negative": (lambda raw: raw["splits"]["train"].update(rows=-6), "splits.train.rows"),
    "rows-a-bool": (lambda raw: raw["splits"]["train"].update(rows=True), "SplitRecord.rows"),
    "unknown-logits-dtype": (lambda raw: raw.update(logits_dtype="float8"), "logits_dtype"),
    "empty-label-name": (lambda raw: raw["label_names"].__setitem__(0, ""), "label_names[0]"),
    "no-label-names": (lambda raw: raw.update(label_names=[]), "label_names"),
    "duplicate-label-names": (lambda raw: raw.update(label_names=["neg", "neg"]), "label_names"),
    "teacher-name-climbs": (lambda raw: _rename_teacher(raw, "../evil"), "teachers key '../evil'"),
    "split-name-climbs": (lambda raw: _rename_split(raw, "../train"), "splits key '../train'"),
    "teacher-not-listed": (lambda raw: raw["teachers"].clear(), ".teacher"),
    "shard-past-its-split": (lambda raw: raw["splits"]["train"].update(rows=5), ".row_end"),
    "shard-rows-disagree": (lambda raw: raw["shards"][0].update(rows=400), ".rows"),
    "shard-rows-zero": (lambda raw: raw.update(shard_rows=0), "shard_rows"),
    "label-mapping-out-of-range": (lambda raw: raw["teachers"]["t"].update(label_mapping=[0, 7]),
                                   "teachers.t.label_mapping[1]"),
    "label-mapping-short": (lambda raw: raw["teachers"]["t"].update(label_mapping=[0]), "teachers.t.label_mapping"),
    "max-length-negative": (lambda raw: raw["teachers"]["t"].update(max_length=-1), "teachers.t.max_length"),
    "sha256-not-hex": (lambda raw: raw["shards"][0].update(sha256="z" * 64), ".sha256"),
}


@pytest.mark.fault
@pytest.mark.parametrize("attack", HOSTILE)
def test_a_hostile_manifest_is_refused_naming_the_field(attack, tmp_path):
    edit, field = HOSTILE[attack]
    out = tmp_path / "c"
    write_tiny_cache(out)
    forge_manifest(out, edit)
    with pytest.raises(CacheFormatError) as raised:
        open_cache(out)
    assert field in str(raised.value) and "\n" not in str(raised.value)
    for command in ("info", "verify"):
        assert_user_error(_cli(command, out), field)


@pytest.mark.fault
def test_experts_on_a_hostile_manifest_is_one_line_not_a_16_tib_allocation(tmp_path):
    out = tmp_path / "c"
    write_tiny_cache(out)
    forge_manifest(out, lambda raw: raw["splits"]["train"].update(rows=10**12))
    assert_user_error(_cli("experts", out, "--split", "train"), "splits.train.rows")


@pytest.mark.fault
def test_pull_refuses_a_hostile_remote_manifest_and_writes_nothing(tmp_path):
    write_tiny_cache(tmp_path / "c")
    remote = tmp_path / "remote"
    push(tmp_path / "c", str(remote))
    forge_manifest(remote, lambda raw: raw["splits"]["train"].update(rows=-1))
    with pytest.raises(CacheFormatError, match="splits.train.rows"):
        pull(str(remote), tmp_path / "local")
    assert not (tmp_path / "local" / MANIFEST_NAME).exists()
    assert not list((tmp_path / "local").rglob("*.parquet"))


def test_the_reader_allocates_nothing_for_a_split_its_shards_do_not_cover(tmp_path, monkeypatch):
    out = tmp_path / "c"
    write_tiny_cache(out)
    forge_manifest(out, lambda raw: raw["splits"]["train"].update(rows=10**9))  # valid, but not what is there
    allocations = []
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda shape, *a, **k: allocations.append(shape) or real_empty(shape, *a, **k))
    with pytest.raises(Exception, match="incomplete"):
        open_cache(out).teacher_outputs("train")
    assert allocations == []


def test_a_saved_manifest_has_a_digest_of_its_canonical_content(tmp_path):
    write_tiny_cache(tmp_path / "c")
    raw = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())
    assert raw["format_version"] == FORMAT_VERSION == 2
    content = {key: value for key, value in raw.items() if key != "digest"}
    import hashlib

    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert raw["digest"] == hashlib.sha256(canonical).hexdigest() == manifest_digest(raw)


# ------------------------------------------------------------------------------ format history

@pytest.fixture
def v1_cache(tmp_path):
    out = shutil.copytree(V1_FIXTURE / "cache", tmp_path / "cache")
    assert json.loads((out / MANIFEST_NAME).read_text())["format_version"] == 1
    assert "digest" not in json.loads((out / MANIFEST_NAME).read_text())
    return out


def test_a_format_1_cache_still_reads_and_verifies(v1_cache):
    cache = open_cache(v1_cache)
    assert cache.teacher_names == ("bert",) and cache.label_names == ("politics", "sports", "tech")
    inputs = cache.inputs("train")
    outputs = cache.teacher_outputs("train")
    assert np.array_equal(inputs.sample_ids, np.arange(6)) and outputs.logits.shape == (6, 1, 3)
    assert np.isfinite(outputs.logits).all()
    report = verify_cache(v1_cache)  # fingerprints recomputed from its inputs; shards identified by sample ids
    assert report.ok and report.shards_checked == 4, report.problems
    assert summarize(v1_cache).format_version == 1


@pytest.mark.fault
def test_a_format_1_shard_listed_as_another_split_is_caught_by_the_fingerprint(v1_cache):
    # Format 1 shards carry no identity: the sample ids match, so only verify's recomputed fingerprint sees it.
    source = v1_cache / "inputs/train/rows-0000000000-0000000004.parquet"
    raw = json.loads((v1_cache / MANIFEST_NAME).read_text())
    raw["label_names"] = list(reversed(raw["label_names"]))
    (v1_cache / MANIFEST_NAME).write_text(json.dumps(raw))
    assert source.exists() and load_manifest(v1_cache)  # a format 1 manifest has no digest to check
    problems = verify_cache(v1_cache).problems
    assert any("split 'train'" in p for p in problems)


@pytest.mark.fault
def test_a_build_upgrades_a_format_1_cache_in_place_keeping_its_shards(v1_cache, tmp_path):
    before = {s.path: s.sha256 for s in load_manifest(v1_cache).shards}
    extra = make_teacher(tmp_path / "extra", "bert", seed=11, num_layers=1)
    report = build_cache(BuildConfig(dataset=DatasetSpec(source=str(V1_FIXTURE / "data")),
                                     teachers=(TeacherSpec("extra", str(extra)),), out=v1_cache, shard_rows=4))
    assert report.shards_reused == 2 and report.shards_written == 2  # the inputs are kept, the new teacher written
    raw = json.loads((v1_cache / MANIFEST_NAME).read_text())
    assert raw["format_version"] == 2 and raw["digest"] == manifest_digest(raw)
    after = {s.path: s.sha256 for s in load_manifest(v1_cache).shards}
    assert {path: after[path] for path in before} == before  # the format 1 shards are untouched
    assert verify_cache(v1_cache).ok
    cache = open_cache(v1_cache)
    assert cache.teacher_names == ("bert", "extra") and np.isfinite(cache.teacher_outputs("train").logits).all()
