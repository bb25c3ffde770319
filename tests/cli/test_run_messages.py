"""What `distill` and `finetune` say while they run, in a log: warnings before training, each epoch's scores,
the evaluation step; metrics.jsonl as each epoch ends; a refused device leaves no run directory."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from helpers.cli import assert_user_error
from helpers.reference import build_teacherless_cache
from mtkd_cache.distillation.runs import DistillConfig, distill
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.layout import METRICS_LOG
from mtkd_cache_cli.app import app

runner = CliRunner()
STUDENT = "bilstm:embed=16,hidden=16"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("run-messages")
    return {"cache": build_teacherless_cache(assets, root), "tokenizer": str(assets["bert"])}


def test_a_log_shows_the_leak_warning_first_then_each_epoch_then_the_evaluation(env, tmp_path):
    result = runner.invoke(app, ["distill", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"],
                                 "--out", str(tmp_path / "run"), "--epochs", "2", "--device", "cpu", "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning:") and "leak" in line)
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2 (distill): started"))
    scores = [i for i, line in enumerate(lines) if "selection macro-F1" in line]
    evaluation = next(i for i, line in enumerate(lines) if line.startswith("evaluating the best student"))
    assert warning < first_epoch < scores[0] < scores[1] < evaluation
    assert lines[scores[0]].startswith("epoch 1/2: train loss ") and "(best so far, saved)" in lines[scores[0]]
    assert "on 'test'" in lines[evaluation]
    assert sum("warning:" in line for line in lines) == 1  # said once, before training


def test_metrics_jsonl_grows_as_each_epoch_ends(env, tmp_path):
    out = tmp_path / "run"
    seen = []

    class Recorder:
        """At each epoch's start, how many lines metrics.jsonl holds; a marker when an epoch is scored."""

        def task(self, description, total, unit="rows"):
            path = out / METRICS_LOG
            seen.append(len(path.read_text().splitlines()) if path.exists() else 0)

        def advance(self, rows):
            pass

        def note(self, message):
            pass

    distill(DistillConfig(cache=env["cache"], student=STUDENT, tokenizer=env["tokenizer"], out=out,
                          strategy=StrategyConfig("average"), expert_split="validation",
                          train=TrainConfig(epochs=3, learning_rate=1e-3, device="cpu")), Recorder())
    assert seen == [0, 1, 2]
    assert [json.loads(line)["epoch"] for line in (out / METRICS_LOG).read_text().splitlines()] == [1, 2, 3]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ("distill", "finetune"))
def test_a_missing_gpu_is_refused_before_anything_is_written(env, assets, tmp_path, command):
    out = tmp_path / "run"
    if command == "distill":
        argv = ["distill", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"]]
    else:
        argv = ["finetune", "--dataset", str(assets["data"]), "--model", str(assets["bert"])]
    result = runner.invoke(app, [*argv, "--out", str(out), "--device", "cuda"])
    assert_user_error(result, "--device cuda was asked for but CUDA is not available")
    assert not out.exists()
