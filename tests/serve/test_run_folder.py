"""`predict` and `export` given a run directory take its student/ (they failed inside transformers before)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers.reference import build_teacherless_cache
from mtkd_cache.distillation.runs import DistillConfig, distill
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.serve.export import model_directory
from mtkd_cache_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("run-folder")
    cache = build_teacherless_cache(assets, root)
    return distill(DistillConfig(cache=cache, student="bert:layers=1,hidden=32,heads=2", tokenizer=str(assets["bert"]),
                                 out=root / "run", strategy=StrategyConfig("average"), expert_split="validation",
                                 train=TrainConfig(epochs=1, learning_rate=1e-3, device="cpu"))).run_dir


def test_predict_given_a_run_directory_uses_its_student(run_dir):
    texts = ["the vote in parliament", "a goal in the match"]
    by_run = runner.invoke(app, ["predict", str(run_dir), "--json", *sum((["--text", t] for t in texts), [])])
    by_student = runner.invoke(app, ["predict", str(run_dir / "student"), "--json",
                                     *sum((["--text", t] for t in texts), [])])
    assert by_run.exit_code == 0, by_run.output
    predictions = lambda result: [list(row["predictions"].values()) for row in json.loads(result.stdout)["texts"]]  # noqa: E731
    assert predictions(by_run) == predictions(by_student) and len(predictions(by_run)) == 2
    assert model_directory(run_dir) == run_dir / "student" and model_directory(run_dir / "student") == run_dir / "student"


def test_export_given_a_run_directory_exports_its_student(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "onnx" / "student.onnx")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "onnx" / "student.onnx").stat().st_size > 0 and "OK" in result.stdout
