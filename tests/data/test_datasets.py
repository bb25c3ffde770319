"""Dataset loading from every supported source, and the user errors it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.assets import LABELS, make_rows, write_csv
from mtkd_cache import DataError, DatasetSpec, load_task_data


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_directory_of_split_files_keeps_canonical_split_order(tmp_path):
    for split in ("test", "validation", "train"):
        _jsonl(tmp_path / f"{split}.jsonl", make_rows(5, 1))
    task = load_task_data(DatasetSpec(source=str(tmp_path)))
    assert list(task.splits) == ["train", "validation", "test"]
    assert task.label_names == tuple(sorted({r["label"] for r in make_rows(5, 1)}))


def test_single_file_is_the_train_split_and_splits_can_be_chosen(tmp_path):
    rows = make_rows(8, 2)
    path = write_csv(tmp_path / "all.csv", rows)
    task = load_task_data(DatasetSpec(source=str(path)))
    assert list(task.splits) == ["train"]
    assert task.splits["train"].texts == [r["text"] for r in rows]
    with pytest.raises(DataError, match="split 'test' not found"):
        load_task_data(DatasetSpec(source=str(path), splits=("train", "test")))


def test_parquet_and_save_to_disk_with_classlabel_ints(tmp_path):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    dataset = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["good", "bad", ""], "label": [1, 0, 1]}, features=features),
        "unlabeled": datasets.Dataset.from_dict({"sentence": ["meh"], "label": [-1]}, features=features),
    })
    dataset.save_to_disk(str(tmp_path / "saved"))
    task = load_task_data(DatasetSpec(source=str(tmp_path / "saved"), text_column="sentence"))
    assert task.label_names == ("neg", "pos")
    assert task.splits["train"].labels.tolist() == [1, 0, 1]
    assert task.splits["train"].texts[2] == ""  # empty text kept (documented policy)
    assert task.splits["unlabeled"].labeled is False
    dataset["train"].to_parquet(str(tmp_path / "pq" / "train.parquet"))
    from_parquet = load_task_data(DatasetSpec(source=str(tmp_path / "pq"), text_column="sentence"))
    assert from_parquet.label_names == ("neg", "pos")  # datasets keeps ClassLabel names in parquet metadata
    assert from_parquet.splits["train"].fingerprint == task.splits["train"].fingerprint
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ints").mkdir()
    pq.write_table(pa.table({"sentence": ["a", "b"], "label": [0, 2]}), tmp_path / "ints" / "train.parquet")
    plain = load_task_data(DatasetSpec(source=str(tmp_path / "ints"), text_column="sentence"))
    assert plain.label_names == ("0", "1", "2")  # plain int labels: the names are the ids


def test_fingerprint_is_content_not_path(tmp_path):
    rows = make_rows(10, 3)
    first = load_task_data(DatasetSpec(source=str(write_csv(tmp_path / "a" / "train.csv", rows).parent)))
    second = load_task_data(DatasetSpec(source=str(write_csv(tmp_path / "b" / "train.csv", rows).parent)))
    assert first.fingerprint == second.fingerprint
    rows[4]["text"] += " changed"
    third = load_task_data(DatasetSpec(source=str(write_csv(tmp_path / "c" / "train.csv", rows).parent)))
    assert third.fingerprint != first.fingerprint
    diffs = [a != b for a, b in zip(first.splits["train"].row_digests, third.splits["train"].row_digests)]
    assert np.flatnonzero(diffs).tolist() == [4]


def test_unicode_nul_and_emoji_survive(tmp_path):
    rows = [{"text": "naïve café 🚀", "label": "a"}, {"text": "nul\x00inside", "label": "b"}]
    task = load_task_data(DatasetSpec(source=str(_jsonl(tmp_path / "train.jsonl", rows))))
    assert task.splits["train"].texts == [r["text"] for r in rows]


@pytest.mark.parametrize(
    ("rows", "spec", "message"),
    [
        ([{"body": "x", "label": "a"}], {}, "no column 'text'"),
        ([{"text": "x", "label": "a"}], {"text_pair_column": "h"}, "no column 'h'"),
        ([{"text": "x", "label": "zzz"}], {"label_names": ("a", "b")}, "'zzz' at rows 0"),
        ([{"text": "x", "label": 7}], {"label_names": ("a", "b")}, "'7' at rows 0"),
        ([{"text": None, "label": "a"}, {"text": "y", "label": "a"}], {}, "missing or invalid-unicode text at rows 0"),
        ([{"text": "x", "label": 1.5}], {}, "float"),
        ([{"text": "x"}], {}, r"no split has the column 'label' \(--label-column\); the columns are text: pass --label-column"),
        ([{"text": "x", "label": None}], {}, "no split has labels"),
    ],
)
def test_user_errors_name_the_problem(tmp_path, rows, spec, message):
    _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_task_data(DatasetSpec(source=str(tmp_path), **spec))


def test_unreadable_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task_data(DatasetSpec(source=str(tmp_path / "nope.csv")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no split files"):
        load_task_data(DatasetSpec(source=str(tmp_path / "empty")))
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "train.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_task_data(DatasetSpec(source=str(tmp_path / "latin1")))
    (tmp_path / "header_only").mkdir()
    (tmp_path / "header_only" / "train.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="is empty"):
        load_task_data(DatasetSpec(source=str(tmp_path / "header_only")))


def test_hub_id_without_network_is_a_clear_error():
    with pytest.raises(DataError, match="as a hub dataset id the Hub is switched off"):
        load_task_data(DatasetSpec(source="some-org/not-a-real-dataset-xyz"))


def test_a_typo_of_a_local_directory_offers_the_near_name(tmp_path, monkeypatch):
    write_csv(tmp_path / "news" / "train.csv", make_rows(4, 0))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as raised:
        load_task_data(DatasetSpec(source="nwes"))
    message = str(raised.value)
    assert message.startswith("--dataset nwes: no file or directory of that name here") and "did you mean ./news?" in message
    assert "None" not in message


def test_files_that_are_not_splits_are_ignored_and_named(tmp_path):
    write_csv(tmp_path / "train.csv", make_rows(6, 0))
    write_csv(tmp_path / "test.csv", make_rows(4, 1))
    (tmp_path / "labels.json").write_text(json.dumps(list(LABELS)))
    (tmp_path / "notes.json").write_text("{}")
    task = load_task_data(DatasetSpec(source=str(tmp_path)))
    assert list(task.splits) == ["train", "test"]
    assert len(task.notes) == 1 and "ignored labels.json, notes.json" in task.notes[0]
    _jsonl(tmp_path / "validation.jsonl", make_rows(3, 2))  # now the split files themselves disagree
    with pytest.raises(DataError, match="mixes file formats .* keep one format for the splits"):
        load_task_data(DatasetSpec(source=str(tmp_path)))


def test_a_missing_label_column_with_label_names_is_said_not_silent(tmp_path):
    write_csv(tmp_path / "train.csv", [{"text": "x", "topic": "tech"}])
    task = load_task_data(DatasetSpec(source=str(tmp_path), label_column="label", label_names=LABELS))
    assert task.splits["train"].labels.tolist() == [-1]
    assert any("every split is cached unlabeled" in note and "topic" in note for note in task.notes)


def test_labels_are_class_indices_in_label_name_order(tmp_path):
    rows = [{"text": "x", "label": label} for label in ("tech", "politics", "sports", "tech")]
    task = load_task_data(DatasetSpec(source=str(write_csv(tmp_path / "train.csv", rows))))
    assert task.label_names == LABELS
    assert task.splits["train"].labels.tolist() == [2, 0, 1, 2]


@pytest.mark.parametrize("header", ["text,label,text", "text\tlabel\ttext"])
def test_a_header_naming_a_column_twice_is_refused_naming_it(tmp_path, header):
    # The CSV reader would rename the second `text` to `text.1`: which column became the texts is a guess.
    separator = "\t" if "\t" in header else ","
    suffix = ".tsv" if separator == "\t" else ".csv"
    (tmp_path / f"train{suffix}").write_text(header + "\n" + separator.join(["hello", "a", "world"]) + "\n")
    with pytest.raises(DataError, match="names column 'text' twice"):
        load_task_data(DatasetSpec(source=str(tmp_path)))


def test_a_parquet_file_with_a_repeated_column_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array(["x"]), pa.array(["a"]), pa.array(["y"])], names=["text", "label", "text"])
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(DataError, match="names column 'text' twice"):
        load_task_data(DatasetSpec(source=str(tmp_path)))
