"""predict_side_by_side: the library call behind `predict` — each model's label per text, JSON for scripts."""

from __future__ import annotations

import pytest

from mtkd_cache.errors import ConfigError
from mtkd_cache.serve.predict import PredictConfig, class_probabilities, load_classifiers, predict_side_by_side

TEXTS = ["The match ended in a draw.", "Parliament voted on the new law."]


def test_each_model_predicts_its_most_probable_label(assets):
    result = predict_side_by_side([assets["bert"], assets["distil"]], TEXTS)
    assert list(result.predictions) == ["bert", "distil"] and result.ensembles == []
    for classifier in load_classifiers([assets["bert"], assets["distil"]]):
        probabilities = class_probabilities(classifier, TEXTS)
        expected = [classifier.label_names[k] for k in probabilities.argmax(axis=1)]
        assert [p.label for p in result.predictions[classifier.name]] == expected
    shown = result.to_json()
    assert shown["models"]["bert"]["runtime"] == "torch" and [row["text"] for row in shown["texts"]] == TEXTS
    assert set(shown["texts"][0]["predictions"]) == {"bert", "distil"}


def test_ensembles_are_added_on_request_and_texts_are_required(assets):
    result = predict_side_by_side([assets["bert"], assets["bert"]], TEXTS, PredictConfig(ensemble=True))
    assert result.ensembles == ["ensemble: vote", "ensemble: mean"]
    assert all(p.probability == 1.0 for p in result.predictions["ensemble: vote"])  # two copies always agree
    with pytest.raises(ConfigError, match="give texts to classify"):
        predict_side_by_side([assets["bert"]], [])
