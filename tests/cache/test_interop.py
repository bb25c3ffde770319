"""A cache is readable without this package: plain pyarrow, polars and `datasets.load_dataset("parquet")`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache, open_cache


@pytest.fixture(scope="module")
def cache_dir(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("interop") / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])),
                            teachers=(TeacherSpec("bert", str(assets["bert"])),), out=out, shard_rows=25))
    return out


def _shards(cache_dir, split, teacher):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    return [str(cache_dir / s["path"]) for s in manifest["shards"] if s["split"] == split and s["teacher"] == teacher]


def test_pyarrow_reads_the_shards_listed_in_the_manifest(cache_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(path) for path in _shards(cache_dir, "train", "bert")])
    assert table.schema.field("logits").type == pa.list_(pa.field("element", pa.float16(), nullable=False), 3)
    logits = table.column("logits").combine_chunks().flatten().to_numpy().reshape(-1, 3)
    expected = open_cache(cache_dir).teacher_outputs("train").logits[:, 0]
    assert np.array_equal(logits, expected)
    assert table.column("sample_id").to_pylist() == list(range(60))


def test_polars_joins_inputs_and_logits_by_sample_id(cache_dir):
    import polars as pl

    inputs = pl.concat([pl.read_parquet(p) for p in _shards(cache_dir, "test", None)])
    outputs = pl.concat([pl.read_parquet(p) for p in _shards(cache_dir, "test", "bert")])
    joined = inputs.join(outputs, on="sample_id").sort("sample_id")
    assert joined.height == 30
    assert joined.schema["logits"] == pl.Array(pl.Float16, 3)
    cached = open_cache(cache_dir)
    assert joined["text"].to_list() == cached.inputs("test").texts
    assert np.array_equal(joined["logits"].to_numpy(), cached.teacher_outputs("test").logits[:, 0])


def test_datasets_load_dataset_parquet(cache_dir, tmp_path):
    import datasets

    loaded = datasets.load_dataset("parquet", data_files={"train": _shards(cache_dir, "train", "bert")},
                                   cache_dir=str(tmp_path / "hf"))["train"]
    assert loaded.num_rows == 60
    # numpy/torch formats upcast to float32 unless the dtype is given (a datasets default, documented in the README)
    logits = loaded.with_format("numpy", dtype=np.float16)[:]["logits"]
    assert logits.dtype == np.float16
    assert np.array_equal(logits, open_cache(cache_dir).teacher_outputs("train").logits[:, 0])
