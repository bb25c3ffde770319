"""The expert table against hand-computed examples, its tie-breaks, and its JSON shape."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtkd_cache.distillation.experts import ExpertTable, compute_expert_table, parse_teacher_subset
from mtkd_cache.errors import ConfigError, DataError

LABELS = ("neg", "neu", "pos")


def table_of(columns: dict[str, list[int]], labels: list[int], label_names=LABELS, split="test") -> ExpertTable:
    teachers = tuple(columns)
    preds = np.array([columns[t] for t in teachers], dtype=np.int64).T
    return compute_expert_table(preds, np.array(labels, dtype=np.int64), teachers, tuple(label_names), split)


# Hand example: 9 labeled rows (4 x neg, 3 x neu, 2 x pos) and one unlabeled row.
HAND_LABELS = [0, 0, 0, 0, 1, 1, 1, 2, 2, -1]
HAND_PREDS = {
    #        neg        neu      pos   unlabeled
    "a": [0, 0, 0, 0, 0, 0, 1, 2, 2, 1],  # neg 4/4, neu 1/3, pos 2/2, overall 7/9
    "b": [0, 1, 1, 1, 1, 1, 1, 2, 0, 0],  # neg 1/4, neu 3/3, pos 1/2, overall 5/9
    "c": [0, 0, 1, 1, 1, 1, 0, 2, 2, 0],  # neg 2/4, neu 2/3, pos 2/2, overall 6/9
}
HAND_ACC = [[4 / 4, 1 / 3, 2 / 2], [1 / 4, 3 / 3, 1 / 2], [2 / 4, 2 / 3, 2 / 2]]
HAND_OVERALL = [7 / 9, 5 / 9, 6 / 9]
# neg -> a (1.0); neu -> b (1.0); pos -> a and c tie at 1.0, a has the higher overall accuracy -> a
HAND_EXPERTS = [0, 1, 0]
HAND_FALLBACK = 0  # a, 7/9


def test_hand_computed_example():
    table = table_of(HAND_PREDS, HAND_LABELS)
    assert table.teachers == ("a", "b", "c") and table.label_names == LABELS and table.split == "test"
    np.testing.assert_allclose(table.per_class_accuracy, HAND_ACC, rtol=0, atol=1e-12)
    np.testing.assert_allclose(table.overall_accuracy, HAND_OVERALL, rtol=0, atol=1e-12)
    assert table.experts.tolist() == HAND_EXPERTS
    assert table.fallback == HAND_FALLBACK and table.fallback_name == "a"
    assert table.class_counts.tolist() == [4, 3, 2]
    assert table.per_class_accuracy.dtype == np.float64 and table.per_class_accuracy.shape == (3, 3)


def test_unlabeled_rows_are_ignored():
    with_unlabeled = table_of(HAND_PREDS, HAND_LABELS)
    # same labeled rows, unlabeled rows added at the front and back with predictions that would matter
    columns = {t: [2, 1] + p[:9] + [0, 2, 1] for t, p in HAND_PREDS.items()}
    more = table_of(columns, [-1, -1] + HAND_LABELS[:9] + [-1, -1, -1])
    without = table_of({t: p[:9] for t, p in HAND_PREDS.items()}, HAND_LABELS[:9])
    for other in (more, without):
        np.testing.assert_array_equal(with_unlabeled.per_class_accuracy, other.per_class_accuracy)
        np.testing.assert_array_equal(with_unlabeled.overall_accuracy, other.overall_accuracy)
        np.testing.assert_array_equal(with_unlabeled.experts, other.experts)
        assert with_unlabeled.fallback == other.fallback
        np.testing.assert_array_equal(with_unlabeled.class_counts, other.class_counts)


def test_all_unlabeled_split_raises_data_error():
    with pytest.raises(DataError, match="no labels"):
        table_of({"a": [0, 1], "b": [1, 1]}, [-1, -1], split="unlabeled")


def test_per_class_tie_broken_by_overall_accuracy():
    """Class neg: both teachers 2/2. "zed" is second by name but better overall -> zed is the expert."""
    labels = [0, 0, 1, 1, 2, 2]
    table = table_of({"alpha": [0, 0, 0, 1, 0, 0],   # neg 2/2, neu 1/2, pos 0/2, overall 3/6
                      "zed": [0, 0, 1, 1, 2, 0]},    # neg 2/2, neu 2/2, pos 1/2, overall 5/6
                     labels)
    assert table.per_class_accuracy[0, 0] == table.per_class_accuracy[1, 0] == 1.0
    assert table.experts.tolist() == [1, 1, 1]
    assert table.fallback == 1


def test_per_class_and_overall_tie_broken_by_name():
    """Tied on every class and overall: the first teacher by name wins, even when it is not index 0."""
    labels = [0, 0, 1, 1, 2, 2]
    preds = {"zeta": [0, 1, 1, 0, 2, 2],   # neg 1/2, neu 1/2, pos 2/2, overall 4/6
             "mid": [0, 0, 0, 0, 0, 0],    # neg 2/2, neu 0/2, pos 0/2, overall 2/6
             "alpha": [1, 0, 0, 1, 2, 2]}  # neg 1/2, neu 1/2, pos 2/2, overall 4/6
    table = table_of(preds, labels)
    assert table.teachers == ("zeta", "mid", "alpha")
    np.testing.assert_allclose(table.overall_accuracy, [4 / 6, 2 / 6, 4 / 6])
    # neg: mid 1.0 (clear winner); neu: zeta vs alpha tie at 1/2, overall tie -> "alpha" (index 2); pos: same
    assert table.experts.tolist() == [1, 2, 2]
    assert table.fallback == 2 and table.fallback_name == "alpha"


def test_fallback_tie_broken_by_name():
    labels = [0, 1, 2, 0]
    table = table_of({"c": [0, 1, 0, 1], "b": [0, 0, 2, 1], "d": [0, 0, 0, 0]}, labels)
    np.testing.assert_allclose(table.overall_accuracy, [2 / 4, 2 / 4, 2 / 4])
    assert table.fallback_name == "b" and table.fallback == 1
    # neg: c 1/2, b 1/2, d 2/2 -> d; neu: c 1/1 -> c; pos: b 1/1 -> b
    assert table.experts.tolist() == [2, 0, 1]


def test_reversed_teacher_order_gives_the_same_named_result():
    """The tie-break is by name, not by position: reordering the teacher tuple never changes who wins."""
    labels = [0, 0, 1, 1, 2, 2]
    preds = {"zeta": [0, 1, 1, 0, 2, 2], "mid": [0, 0, 0, 0, 0, 0], "alpha": [1, 0, 0, 1, 2, 2]}
    forward = table_of(preds, labels)
    backward = table_of(dict(reversed(list(preds.items()))), labels)
    assert forward.to_json()["experts"] == backward.to_json()["experts"]
    assert forward.fallback_name == backward.fallback_name == "alpha"


def test_absent_class_has_no_accuracy_and_the_fallback_as_expert():
    names = ("neg", "neu", "pos", "other")
    labels = [0, 0, 1, 2, 2, -1]
    table = table_of({"b": [0, 1, 1, 2, 2, 3], "a": [0, 0, 3, 2, 0, 3]}, labels, label_names=names)
    # b: neg 1/2, neu 1/1, pos 2/2, overall 4/5; a: neg 2/2, neu 0/1, pos 1/2, overall 3/5 -> M = b
    assert table.fallback_name == "b"
    assert np.isnan(table.per_class_accuracy[:, 3]).all()
    assert not np.isnan(table.per_class_accuracy[:, :3]).any()
    assert table.class_counts.tolist() == [2, 1, 2, 0]
    assert table.experts.tolist() == [1, 0, 0, 0]  # other -> M (b, index 0)
    raw = table.to_json()
    assert raw["per_class_accuracy"]["a"]["other"] is None and raw["per_class_accuracy"]["b"]["other"] is None
    assert raw["per_class_accuracy"]["a"]["neg"] == 1.0
    assert raw["experts"]["other"] == raw["fallback"] == "b"


def test_absent_class_expert_is_fallback_even_when_fallback_is_not_index_0():
    labels = [0, 0, 1, 1]
    table = table_of({"z": [1, 1, 1, 1], "y": [0, 0, 1, 0]}, labels)  # pos (2) never appears
    assert table.fallback_name == "y"
    assert table.experts[2] == 1


def test_to_json_shape():
    raw = table_of(HAND_PREDS, HAND_LABELS).to_json()
    assert {"per_class_accuracy", "overall_accuracy", "experts", "fallback"} <= set(raw)
    assert set(raw["per_class_accuracy"]) == {"a", "b", "c"}
    assert all(set(row) == set(LABELS) for row in raw["per_class_accuracy"].values())
    assert math.isclose(raw["per_class_accuracy"]["a"]["neu"], 1 / 3)
    assert math.isclose(raw["overall_accuracy"]["c"], 6 / 9)
    assert raw["experts"] == {"neg": "a", "neu": "b", "pos": "a"}
    assert raw["fallback"] == "a"
    assert raw["split"] == "test" and raw["class_counts"] == {"neg": 4, "neu": 3, "pos": 2}
    import json
    assert json.loads(json.dumps(raw)) == raw  # plain JSON types only


def test_from_json_round_trips():
    names = ("neg", "neu", "pos", "other")
    table = table_of({"b": [0, 1, 1, 2, 2], "a": [0, 0, 3, 2, 0]}, [0, 0, 1, 2, 2], label_names=names,
                     split="validation")
    back = ExpertTable.from_json(table.to_json(), table.teachers, table.label_names)
    assert back.split == "validation" and back.teachers == table.teachers and back.label_names == names
    np.testing.assert_array_equal(back.per_class_accuracy, table.per_class_accuracy)  # NaN == NaN here
    np.testing.assert_array_equal(back.overall_accuracy, table.overall_accuracy)
    np.testing.assert_array_equal(back.experts, table.experts)
    assert back.fallback == table.fallback
    np.testing.assert_array_equal(back.class_counts, table.class_counts)
    assert back.to_json() == table.to_json()


def test_parse_teacher_subset():
    available = ("a", "b", "c")
    assert parse_teacher_subset(None, available) == available
    assert parse_teacher_subset("", available) == available
    assert parse_teacher_subset("c, a", available) == ("c", "a")
    with pytest.raises(ConfigError, match="a, b, c"):
        parse_teacher_subset("a,x", available)
    with pytest.raises(ConfigError):
        parse_teacher_subset("a,b,a", available)
