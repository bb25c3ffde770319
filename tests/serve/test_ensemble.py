"""The ensemble's tie rule and the table it adds to comparison.md."""

from __future__ import annotations

import numpy as np

from mtkd_cache.report.evaluation import Metrics
from mtkd_cache.serve.ensemble import EnsembleReport, majority_vote, mean_probability_vote


def test_a_tied_vote_goes_to_the_class_with_the_higher_mean_probability():
    # Two votes each for classes 0 and 1; class 1's mean probability is higher (0.72 against 0.28).
    probabilities = np.array([[[0.51, 0.49, 0.0]], [[0.51, 0.49, 0.0]], [[0.0, 1.0, 0.0]], [[0.1, 0.9, 0.0]]])
    assert majority_vote(probabilities).tolist() == [1]
    assert mean_probability_vote(probabilities).tolist() == [1]
    clear = np.array([[[0.9, 0.1, 0.0]], [[0.8, 0.2, 0.0]], [[0.0, 0.0, 1.0]]])
    assert majority_vote(clear).tolist() == [0] and mean_probability_vote(clear).tolist() == [0]


def test_the_ensemble_table_lists_members_then_both_ensembles():
    metrics = Metrics(accuracy=0.5, macro_f1=0.25, mcc=0.0, per_class_accuracy=[], confusion_matrix=[])
    report = EnsembleReport("test", 4, {"s0": metrics, "s1": metrics}, metrics, metrics)
    lines = report.markdown()
    assert lines[0] == "## Ensemble on `test`" and lines[2] == "| model | accuracy | macro-F1 | MCC |"
    assert [line.split("|")[1].strip() for line in lines[4:]] == ["s0", "s1", "ensemble: majority vote",
                                                                   "ensemble: mean probability"]
    assert lines[4] == "| s0 | 0.5000 | 0.2500 | 0.0000 |"
