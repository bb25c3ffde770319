"""`--student static:SOURCE`: a model2vec table distilled offline from a local encoder, trained end to end here
on the cached teacher targets, saved so model2vec loads the table, and served by predict and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model2vec import StaticModel
from model2vec.distill import distill as model2vec_distill
from typer.testing import CliRunner

from helpers.assets import LABELS
from helpers.cli import assert_user_error
from helpers.reference import build_teacherless_cache
from mtkd_cache import ConfigError
from mtkd_cache.distillation.static_student import StaticClassifier, save_table
from mtkd_cache.distillation.students import build_student, load_saved_student
from mtkd_cache.layout import STUDENT_DIR
from mtkd_cache.serve.predict import class_probabilities, load_classifiers
from mtkd_cache_cli.app import app

runner = CliRunner()
TEXTS = ["the vote and the law", "a goal in the match by the team", "cloud data", "a"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(assets, **options) -> str:
    return f"static:{assets['bert']}" + "".join(f",{k}={v}" for k, v in {"dims": 8, "hidden": 16, **options}.items())


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    cache = build_teacherless_cache(assets, root)
    out = root / "run"
    result = runner.invoke(app, ["distill", str(cache), "--student", _spec(assets), "--strategy", "average",
                                 "--out", str(out), "--epochs", "2", "--lr", "5e-2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return {"root": root, "cache": cache, "out": out}


def test_the_table_is_model2vecs_distillation_of_the_source(assets):
    model, tokenizer, kind = build_student(_spec(assets), LABELS, None)
    expected = model2vec_distill(model_name=str(assets["bert"]), pca_dims=8, quantize_to="float32")
    assert kind == "static" and isinstance(model, StaticClassifier)
    np.testing.assert_allclose(model.embedding.weight.detach().numpy(), expected.embedding, rtol=1e-5, atol=1e-6)
    ids = tokenizer("the vote")["input_ids"]
    assert ids == expected.tokenizer.encode("the vote", add_special_tokens=False).ids  # model2vec's own tokens


def test_trained_table_loads_with_model2vec_and_was_trained(assets, run):
    student_dir = run["out"] / STUDENT_DIR
    model, tokenizer = load_saved_student(student_dir)
    table = StaticModel.from_pretrained(student_dir, normalize=False)
    trained = model.embedding.weight.detach().numpy()
    np.testing.assert_allclose(table.embedding, trained, rtol=1e-6)
    fresh, _, _ = build_student(_spec(assets), LABELS, None)
    assert not np.allclose(fresh.embedding.weight.detach().numpy(), trained)  # the table moved in training
    # model2vec's mean over a text's token vectors is the student's pooled row
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].unsqueeze(2).float()
    pooled = (model.embedding(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(table.encode(TEXTS), pooled.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_predict_and_export_agree_with_the_torch_student(run, tmp_path):
    student_dir = run["out"] / STUDENT_DIR
    onnx_file = tmp_path / "static" / "model.onnx"
    result = runner.invoke(app, ["export", str(student_dir), "--out", str(onnx_file)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "static" in result.stdout and "OK" in result.stdout
    torch_side, onnx_side = load_classifiers([student_dir, onnx_file])
    assert torch_side.runtime == "torch" and onnx_side.runtime == "onnxruntime"
    assert torch_side.label_names == onnx_side.label_names == LABELS
    np.testing.assert_allclose(class_probabilities(onnx_side, TEXTS), class_probabilities(torch_side, TEXTS),
                               atol=1e-5)
    model, tokenizer = load_saved_student(student_dir)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = torch.softmax(model.eval()(**batch).logits, dim=1).numpy()
    np.testing.assert_allclose(class_probabilities(torch_side, TEXTS), expected, atol=1e-6)


def test_static_refusals(assets, run, tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'layers=2'"):
        build_student(f"static:{assets['bert']},layers=2", LABELS, None)
    with pytest.raises(ConfigError, match="keeps its source's tokenizer"):
        build_student(_spec(assets), LABELS, str(assets["bert"]))
    result = runner.invoke(app, ["distill", str(run["cache"]), "--student", f"static:{tmp_path / 'nothing'}",
                                 "--out", str(tmp_path / "refused"), "--device", "cpu"])
    assert_user_error(result, "is not a save_pretrained directory")
    assert not (tmp_path / "refused").exists()


def test_a_saved_table_is_loaded_as_it_is(assets, tmp_path):
    table = save_table(assets["bert"], 8, tmp_path / "table")
    loaded, tokenizer, kind = build_student(f"static:{table},hidden=16", LABELS, None)
    distilled, _, _ = build_student(_spec(assets), LABELS, None)
    assert kind == "static" and loaded.config.dims == 8
    torch.testing.assert_close(loaded.embedding.weight, distilled.embedding.weight)
    assert tokenizer("the vote")["input_ids"] == StaticModel.from_pretrained(table).tokenizer.encode(
        "the vote", add_special_tokens=False).ids
    with pytest.raises(ConfigError, match="is a model2vec table of 8 dimensions"):
        build_student(f"static:{table},dims=4", LABELS, None)
