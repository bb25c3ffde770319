"""import-logits: a file of logits joins a cache as a teacher; every bad row is refused by id before a byte is written."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from helpers.cli import assert_user_error
from helpers.manifests import write_tiny_cache
from mtkd_cache import open_cache, verify_cache
from mtkd_cache.cache.manifest import MANIFEST_NAME, load_manifest
from mtkd_cache_cli.app import app

cli = CliRunner()
SPLITS = {"train": 10, "test": 6}


@pytest.fixture
def cache(tmp_path):
    out = tmp_path / "cache"
    write_tiny_cache(out, shard_rows=4, splits=SPLITS)
    return out


def _original(cache, split):
    return open_cache(cache).teacher_outputs(split, ["t"]).logits[:, 0].astype(np.float32)


def _long_table(cache, order=None):
    """Every split's rows of teacher t, shuffled, with a list column of logits."""
    splits, ids, logits = [], [], []
    for split, rows in SPLITS.items():
        splits += [split] * rows
        ids += list(range(rows))
        logits += _original(cache, split).tolist()
    order = np.random.default_rng(0).permutation(len(ids)) if order is None else order
    return pa.table({"split": [splits[i] for i in order], "sample_id": [ids[i] for i in order],
                     "logits": [logits[i] for i in order]})


def _import(cache, *args):
    return cli.invoke(app, ["import-logits", str(cache), *args])


def test_parquet_round_trip_equals_the_original_and_verifies(cache, tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_long_table(cache), path)
    arguments = ["--teacher", "copy", "--file", str(path), "--source", "team-x/model", "--revision", "v3",
                 "--note", "scored on the cluster"]
    result = _import(cache, *arguments)
    assert result.exit_code == 0, result.output
    for split in SPLITS:
        assert np.array_equal(_original(cache, split), open_cache(cache).teacher_outputs(split, ["copy"]).logits[:, 0])
    assert verify_cache(cache).ok
    info = json.loads(cli.invoke(app, ["info", str(cache), "--json"]).stdout)
    copy = next(t for t in info["teachers"] if t["name"] == "copy")
    assert copy["backend"] == "imported" and copy["source"] == "team-x/model" and copy["revision"] == "v3"
    assert copy["note"] == "scored on the cluster" and len(copy["file_sha256"]) == 64
    again = _import(cache, *arguments)  # the same file again: nothing to do
    assert again.exit_code == 0 and "0 shard(s) written, 5 reused" in again.stdout, again.output


def test_csv_by_text_with_one_column_per_label_in_another_order(cache, tmp_path):
    texts = open_cache(cache).inputs("train").texts
    logits = _original(cache, "train")
    path = tmp_path / "t.csv"
    pacsv.write_csv(pa.table({"text": texts[::-1], "pos": logits[::-1, 1], "neg": logits[::-1, 0]}), path)
    result = _import(cache, "--teacher", "bytext", "--file", str(path), "--split", "train")
    assert result.exit_code == 0, result.output
    assert np.array_equal(open_cache(cache).teacher_outputs("train", ["bytext"]).logits[:, 0], logits)


def test_npy_in_the_files_label_order(cache, tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, _original(cache, "test")[:, ::-1])
    result = _import(cache, "--teacher", "fromnpy", "--file", str(path), "--split", "test", "--label-names", "pos,neg")
    assert result.exit_code == 0, result.output
    assert np.array_equal(open_cache(cache).teacher_outputs("test", ["fromnpy"]).logits[:, 0], _original(cache, "test"))


def _bad_file(cache, tmp_path, edit):
    table = _long_table(cache, order=np.arange(sum(SPLITS.values())))
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    edit(columns)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _drop(columns, index):
    for values in columns.values():
        del values[index]


@pytest.mark.parametrize(("edit", "fragments"), [
    (lambda c: _drop(c, 3), ["split 'train' lacks sample id(s) 3"]),
    (lambda c: c["sample_id"].__setitem__(4, 5), ["sample id(s) 5 of split 'train' appear more than once"]),
    (lambda c: c["sample_id"].__setitem__(2, 40), ["sample id(s) 40 are not in split 'train'"]),
    (lambda c: c["logits"].__setitem__(12, [1.0, 2.0, 3.0]), ["hold 3 logits, the cache has 2 classes"]),
    (lambda c: c["logits"].__setitem__(11, [float("nan"), 0.0]), ["NaN or infinite logits for sample id(s) 1 of split 'test'"]),
    (lambda c: c["split"].__setitem__(0, "dev"), ["names split(s) dev"]),
])
def test_bad_rows_exit_2_naming_them_and_write_nothing(cache, tmp_path, edit, fragments):
    before = (cache / MANIFEST_NAME).read_bytes()
    result = _import(cache, "--teacher", "bad", "--file", str(_bad_file(cache, tmp_path, edit)))
    assert_user_error(result, *fragments)
    assert (cache / MANIFEST_NAME).read_bytes() == before
    assert not (cache / "outputs" / "bad").exists()


def test_wrong_label_names_and_a_changed_file_under_the_same_name(cache, tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_long_table(cache), path)
    assert_user_error(_import(cache, "--teacher", "x", "--file", str(path), "--label-names", "pos,maybe"),
                      "--label-names pos, maybe are not the cache's labels")
    assert _import(cache, "--teacher", "x", "--file", str(path)).exit_code == 0
    table = _long_table(cache)
    pq.write_table(table.set_column(2, "logits", pa.array([[v + 1 for v in row] for row in table.column(2).to_pylist()])),
                   path)
    assert_user_error(_import(cache, "--teacher", "x", "--file", str(path)), "file_sha256: cached")
    assert load_manifest(cache).teachers["x"].backend == "imported"
