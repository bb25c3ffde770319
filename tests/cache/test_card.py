"""The dataset card push writes: `datasets.load_dataset` opens a pushed cache through its YAML with the
cached values and features, the body states the manifest's facts, and a push-merge keeps every teacher."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from helpers.assets import LABELS
from helpers.reference import build_teacherless_cache
from mtkd_cache import DatasetSpec
from mtkd_cache.cache.card import render_card
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.cache.reader import open_cache
from mtkd_cache.cache.sharing import push
from mtkd_cache.layout import CARD_NAME
from mtkd_cache.runners.base import RunnerConfig
from mtkd_cache.runners.build import BuildConfig, build_cache
from mtkd_cache.runners.teachers import TeacherSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def caches(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    both = build_teacherless_cache(assets, root)  # teachers bert and distil, splits train/validation/test
    only_bert = root / "only-bert"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])),
                            teachers=(TeacherSpec("bert", str(assets["bert"])),), out=only_bert, shard_rows=16,
                            runner=RunnerConfig(device="cpu")))
    return {"both": both, "bert": only_bert, "root": root}


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, text[:200]
    return yaml.safe_load(match.group(1))


def test_load_dataset_reads_the_pushed_cache_through_its_card(caches, tmp_path):
    import datasets

    remote = tmp_path / "remote"
    push(caches["both"], str(remote))
    cache = open_cache(caches["both"])
    for teacher in ("bert", "distil"):
        loaded = datasets.load_dataset(str(remote), f"teacher-{teacher}", cache_dir=str(tmp_path / "hf"))
        assert set(loaded) == set(cache.split_names)
        for split in cache.split_names:
            expected = cache.teacher_outputs(split, [teacher])
            got = loaded[split].with_format("numpy")
            assert loaded[split].features["logits"].feature.dtype == "float16"
            np.testing.assert_array_equal(got["sample_id"], cache.inputs(split).sample_ids)
            np.testing.assert_array_equal(np.stack(got["logits"]), expected.logits[:, 0])
            np.testing.assert_array_equal(got["pred"], expected.preds[:, 0])
    inputs = datasets.load_dataset(str(remote), "inputs", cache_dir=str(tmp_path / "hf"))
    assert inputs["train"].features["label"].names == list(LABELS)
    assert inputs["test"]["text"] == cache.inputs("test").texts
    assert inputs["test"]["label"] == cache.inputs("test").labels.tolist()


def test_the_card_states_the_manifests_facts(caches, tmp_path):
    remote = tmp_path / "remote"
    push(caches["both"], str(remote))
    text = (remote / CARD_NAME).read_text()
    manifest = load_manifest(caches["both"])
    front = _front_matter(text)
    names = [config["config_name"] for config in front["configs"]]
    assert names == ["inputs", "teacher-bert", "teacher-distil"]
    bert_files = next(c for c in front["configs"] if c["config_name"] == "teacher-bert")["data_files"]
    assert {entry["split"]: entry["path"] for entry in bert_files} == {
        split: [r.path for r in manifest.shards_of(split, "bert")] for split in manifest.splits}
    infos = {info["config_name"]: info for info in front["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in infos["inputs"]["splits"]} == {
        name: record.rows for name, record in manifest.splits.items()}
    assert manifest.dataset.fingerprint in text
    for name, teacher in manifest.teachers.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert teacher.weights_sha256 in row and teacher.source in row and teacher.backend in row
    assert ", ".join(f"`{label}`" for label in manifest.label_names) in text
    teacher_rows = sum(r.rows for r in manifest.shards if r.teacher)
    per_sample = sum(r.bytes for r in manifest.shards if r.teacher) / teacher_rows
    assert f"{per_sample:.1f} bytes per sample per teacher" in text
    assert f"mtkd-cache pull {remote} cache/" in text and "mtkd-cache verify cache/" in text
    assert render_card(manifest, str(remote)) == text  # generated from the manifest alone


def test_a_push_that_merges_keeps_every_teacher_in_the_card(caches, tmp_path):
    remote = tmp_path / "remote"
    push(caches["bert"], str(remote))
    assert [c["config_name"] for c in _front_matter((remote / CARD_NAME).read_text())["configs"]] == \
        ["inputs", "teacher-bert"]
    push(caches["both"], str(remote))  # adds distil beside bert
    card = (remote / CARD_NAME).read_text()
    assert [c["config_name"] for c in _front_matter(card)["configs"]] == ["inputs", "teacher-bert", "teacher-distil"]
    push(caches["bert"], str(remote))  # a push of one teacher does not drop the other from the card
    assert [c["config_name"] for c in _front_matter((remote / CARD_NAME).read_text())["configs"]] == \
        ["inputs", "teacher-bert", "teacher-distil"]
