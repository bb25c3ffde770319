"""build -> info -> verify on a 3-class fixture with two teachers of different architectures and label orders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from helpers.assets import LABELS, make_teacher, write_csv
from mtkd_cache import BuildConfig, DatasetSpec, RunnerConfig, TeacherSpec, build_cache, open_cache, verify_cache
from mtkd_cache.data.batching import tokenize_rows
from mtkd_cache_cli.app import app

runner = CliRunner()


def _build(assets, out, teachers=("bert", "distil"), **overrides):
    config = BuildConfig(
        dataset=DatasetSpec(source=str(assets["data"])),
        teachers=tuple(TeacherSpec(name, str(assets[name])) for name in teachers),
        out=out, shard_rows=overrides.pop("shard_rows", 16), **overrides,
    )
    return build_cache(config)


@pytest.fixture(scope="module")
def cache_dir(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    _build(assets, out)
    return out


def _direct_logits(teacher_dir, texts, max_length=128):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        accepted = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask") or model.config.model_type == "bert"}
        return model(**accepted).logits.float().numpy(), model.config.id2label


def test_cached_logits_equal_a_direct_model_call_in_dataset_label_order(assets, cache_dir):
    cache = open_cache(cache_dir)
    assert cache.label_names == LABELS
    assert cache.teacher_names == ("bert", "distil")
    for split, rows in (("train", 60), ("validation", 20), ("test", 30)):
        inputs = cache.inputs(split)
        outputs = cache.teacher_outputs(split)
        assert outputs.logits.shape == (rows, 2, 3) and outputs.logits.dtype == np.float16
        assert np.array_equal(inputs.sample_ids, np.arange(rows))
        for position, name in enumerate(("bert", "distil")):
            direct, id2label = _direct_logits(assets[name], inputs.texts)
            order = [next(i for i, label in id2label.items() if label == name_) for name_ in LABELS]
            expected = direct[:, order]  # teacher's own label order -> the dataset's
            np.testing.assert_allclose(outputs.logits[:, position].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
            assert np.array_equal(outputs.preds[:, position], expected.argmax(axis=1))


def test_inputs_keep_row_order_texts_and_labels(assets, cache_dir):
    import csv

    with open(assets["data"] / "test.csv") as handle:
        rows = list(csv.DictReader(handle))
    inputs = open_cache(cache_dir).inputs("test")
    assert inputs.texts == [r["text"] for r in rows]
    assert [LABELS[i] for i in inputs.labels] == [r["label"] for r in rows]
    assert inputs.text_pairs is None


def test_teachers_disagree_so_the_fixture_is_meaningful(cache_dir):
    preds = open_cache(cache_dir).teacher_outputs("train").preds
    assert (preds[:, 0] != preds[:, 1]).any()
    assert len(np.unique(preds)) > 1


def test_info_json_and_table(cache_dir):
    result = runner.invoke(app, ["info", str(cache_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["label_names"] == list(LABELS)
    assert {s["name"]: s["rows"] for s in info["splits"]} == {"train": 60, "validation": 20, "test": 30}
    assert [t["name"] for t in info["teachers"]] == ["bert", "distil"]
    assert info["logits_dtype"] == "float16"
    assert 0 < info["logits_bytes_per_sample"] < 200
    table = runner.invoke(app, ["info", str(cache_dir)])
    assert table.exit_code == 0 and "distil" in table.stdout and "politics" in table.stdout


def test_verify_ok_on_a_clean_cache(cache_dir):
    result = runner.invoke(app, ["verify", str(cache_dir)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout
    report = verify_cache(cache_dir)
    assert report.ok and not report.stray_files and not report.incomplete
    assert report.shards_checked == (4 + 2 + 2) * 3  # 16-row shards of 60/20/30 rows, for inputs and 2 teachers


def test_rerun_reuses_every_shard_and_adding_a_teacher_touches_no_other(assets, tmp_path):
    out = tmp_path / "c"
    _build(assets, out, teachers=("bert",))
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    again = _build(assets, out, teachers=("bert",))
    assert again.shards_written == 0 and again.shards_reused == len(before)
    added = _build(assets, out, teachers=("bert", "distil"))
    assert added.rows_computed == {"distil": 110}
    assert all(path.read_bytes() == data for path, data in before.items())
    assert open_cache(out).teacher_names == ("bert", "distil")


def test_tokenization_is_shared_by_teachers_with_one_tokenizer(assets, tmp_path, monkeypatch):
    calls = []
    import mtkd_cache.runners.build as build_module

    def counting(tokenizer, texts, pairs, max_length):
        calls.append(len(texts))
        return tokenize_rows(tokenizer, texts, pairs, max_length)

    monkeypatch.setattr(build_module, "tokenize_rows", counting)
    cased = make_teacher(tmp_path / "cased", "bert", seed=5, lowercase=False)
    config = BuildConfig(
        dataset=DatasetSpec(source=str(assets["data"])),
        teachers=(TeacherSpec("bert", str(assets["bert"])), TeacherSpec("distil", str(assets["distil"])),
                  TeacherSpec("cased", str(cased))),
        out=tmp_path / "c",
    )
    build_cache(config)
    # bert and distil share a tokenizer (one pass per split); cased has its own: 2 groups x 3 splits.
    assert sorted(calls) == sorted([60, 20, 30] * 2)


def test_float32_logits_on_request_and_text_pairs(tmp_path, assets):
    rows = [{"premise": f"the team {i % 7}", "hypothesis": "a goal" * (i % 3 + 1), "label": LABELS[i % 3]} for i in range(24)]
    write_csv(tmp_path / "nli" / "train.csv", rows)
    out = tmp_path / "c"
    build_cache(BuildConfig(
        dataset=DatasetSpec(source=str(tmp_path / "nli"), text_column="premise", text_pair_column="hypothesis"),
        teachers=(TeacherSpec("bert", str(assets["bert"])),), out=out, logits_dtype="float32",
        runner=RunnerConfig(batch_tokens=64),
    ))
    cache = open_cache(out)
    inputs = cache.inputs("train")
    assert inputs.text_pairs == [r["hypothesis"] for r in rows]
    logits = cache.teacher_outputs("train").logits
    assert logits.dtype == np.float32
    tokenizer = AutoTokenizer.from_pretrained(assets["bert"])
    model = AutoModelForSequenceClassification.from_pretrained(assets["bert"]).eval()
    with torch.inference_mode():
        batch = tokenizer(inputs.texts, inputs.text_pairs, padding=True, return_tensors="pt")
        direct = model(**batch).logits.numpy()
    np.testing.assert_allclose(logits[:, 0], direct, rtol=1e-4, atol=1e-5)


def test_truncated_rows_are_counted(tmp_path, assets):
    write_csv(tmp_path / "d" / "train.csv", [{"text": "the match " * 100, "label": "sports"},
                                             {"text": "a vote", "label": "politics"}])
    out = tmp_path / "c"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(tmp_path / "d"), label_names=LABELS),
                            teachers=(TeacherSpec("bert", str(assets["bert"])),), out=out,
                            runner=RunnerConfig(max_length=16)))
    assert open_cache(out).manifest.teachers["bert"].truncated_rows == {"train": 1}


def test_one_class_and_unlabeled_splits_build(tmp_path, assets):
    write_csv(tmp_path / "d" / "train.csv", [{"text": "a goal", "label": "sports"}] * 5)
    write_csv(tmp_path / "d" / "transfer.csv", [{"text": "the chip"}, {"text": "a vote and a law"}])
    out = tmp_path / "c"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(tmp_path / "d"), label_names=LABELS),
                            teachers=(TeacherSpec("bert", str(assets["bert"])),), out=out))
    cache = open_cache(out)
    assert cache.manifest.splits["transfer"].labeled is False
    assert cache.inputs("transfer").labels.tolist() == [-1, -1]
    assert cache.teacher_outputs("transfer").logits.shape == (2, 1, 3)


def test_duplicate_texts_keep_their_own_rows(tmp_path, assets):
    write_csv(tmp_path / "d" / "train.csv", [{"text": "a goal", "label": "sports"}] * 3 + [{"text": "a vote", "label": "politics"}])
    out = tmp_path / "c"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(tmp_path / "d"), label_names=LABELS),
                            teachers=(TeacherSpec("bert", str(assets["bert"])),), out=out))
    inputs = open_cache(out).inputs("train")
    assert inputs.sample_ids.tolist() == [0, 1, 2, 3] and inputs.texts.count("a goal") == 3


def test_cpu_build_records_device_and_dtype(cache_dir):
    record = open_cache(cache_dir).manifest.teachers["bert"]
    assert (record.device, record.dtype, record.backend) == ("cpu", "float32", "torch")
    assert record.label_mapping == [0, 1, 2]
    assert open_cache(cache_dir).manifest.teachers["distil"].label_mapping == [1, 2, 0]
