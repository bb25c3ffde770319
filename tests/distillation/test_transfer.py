"""Transfer data end to end: an augmented unlabeled split built into the cache, the two-stage (TMKD) schedule
in distill, and ensembles of students in `report --ensemble`, recomputed here from the saved students."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers.assets import make_rows, write_dataset
from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache, open_cache
from mtkd_cache.data.augment import AugmentConfig, augment_split, write_split
from mtkd_cache.data.batching import tokenize_rows
from mtkd_cache.distillation.runs import DistillConfig, TransferStage, distill
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.students import load_saved_student
from mtkd_cache.distillation.training import TrainConfig, predict_logits
from mtkd_cache.errors import ConfigError
from mtkd_cache.serve.ensemble import majority_vote, mean_probability_vote
from mtkd_cache_cli.app import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
STUDENT = "bert:layers=1,hidden=32,heads=2"


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    data = write_dataset(root / "data")
    train_texts = [row["text"] for row in make_rows(60, seed=0)]
    rows = augment_split(train_texts, None, AugmentConfig(ops=(("mask", 0.2), ("swap", 0.2)), seed=0))
    write_split(data / "transfer.csv", rows, "train")
    cache = root / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(data)), out=cache, shard_rows=64,
                            teachers=(TeacherSpec("a", str(assets["bert"])), TeacherSpec("b", str(assets["distil"])))))
    return {"root": root, "cache": cache, "tokenizer": str(assets["bert"]), "transfer_rows": len(rows)}


def config(env, out: Path, stage1: TransferStage | None = None, **changes) -> DistillConfig:
    train = TrainConfig(epochs=changes.pop("epochs", 1), learning_rate=1e-3, device="cpu", seed=changes.pop("seed", 0))
    return DistillConfig(cache=env["cache"], student=STUDENT, tokenizer=env["tokenizer"], out=out,
                         expert_split="validation", train=train, stage1=stage1, **changes)


def test_the_transfer_split_is_cached_unlabeled(env):
    cache = open_cache(env["cache"])
    assert cache.split_names == ("train", "validation", "test", "transfer")
    transfer = cache.inputs("transfer")
    assert len(transfer.labels) == env["transfer_rows"] == 2 * 60 and (transfer.labels == -1).all()
    assert cache.teacher_outputs("transfer").logits.shape == (120, 2, 3)


def test_two_stage_run_records_both_stages_and_starts_stage_two_from_stage_one(env, tmp_path):
    result = distill(config(env, tmp_path / "two", TransferStage("transfer", epochs=2, strategy="average"), epochs=1))
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["stage1"]["split"] == "transfer" and report["stage1"]["strategy"] == "average"
    assert report["stage1"]["rows"] == 120 and len(report["stage1"]["history"]) == 2 and len(report["history"]) == 1
    assert report["train_seconds"] == pytest.approx(report["stage1"]["train_seconds"] + result.train.train_seconds)
    lines = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [(line["stage"], line["epoch"]) for line in lines] == [(1, 1), (1, 2), (2, 1)]
    assert (tmp_path / "two" / "stage1" / "checkpoint.pt").exists()



def test_stage_two_starts_from_stage_one_last_weights(env, tmp_path, monkeypatch):
    import mtkd_cache.distillation.runs

    starts = []
    real_train = mtkd_cache.distillation.runs.train

    def recording_train(model, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(mtkd_cache.distillation.runs, "train", recording_train)
    distill(config(env, tmp_path / "two", TransferStage("transfer", epochs=2)))
    stage1_last = torch.load(tmp_path / "two" / "stage1" / "checkpoint.pt", weights_only=False)["model"]
    assert len(starts) == 2
    assert all(torch.equal(starts[1][k], stage1_last[k]) for k in stage1_last)
    assert not all(torch.equal(starts[0][k], stage1_last[k]) for k in stage1_last)  # stage 1 did train


def test_a_run_killed_in_stage_one_resumes_to_the_same_student(env, tmp_path):
    args = ["distill", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"], "--lr", "1e-3",
            "--device", "cpu", "--epochs", "1", "--expert-split", "validation", "--stage1-split", "transfer",
            "--stage1-epochs", "2", "--strategy", "random"]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                       MTKD_CACHE_FAULT="epoch_checkpointed:1")
    killed = subprocess.run([sys.executable, "-m", "mtkd_cache", *args, "--out", str(tmp_path / "k")],
                            env=environment, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "k" / "report.json").exists()
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "k")]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "s")]).exit_code == 0
    resumed, straight = (load_file(tmp_path / d / "student" / "model.safetensors") for d in ("k", "s"))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.parametrize("changes, message", [
    ({"expert_split": "transfer"}, "--expert-split transfer: that split has no gold labels"),
    ({"selection_split": "transfer"}, "--selection-split transfer: that split has no gold labels"),
    ({"stage1": {"split": "unlabeled"}}, "--stage1-split unlabeled: the cache has splits"),
    ({"stage1": {"split": "transfer", "epochs": 0}}, "--stage1-epochs must be at least 1"),
    ({"stage1": {"split": "transfer", "strategy": "oracle"}}, "--stage1-strategy must be one of"),
])
def test_bad_transfer_options_are_refused(env, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):  # by the stage itself, or when the run opens the cache
        stage1 = {"stage1": TransferStage(**changes["stage1"])} if "stage1" in changes else {}
        distill(dataclasses.replace(config(env, tmp_path / "bad"), **{**changes, **stage1}))
    assert not (tmp_path / "bad").exists()


def test_unlabeled_train_split_distils_from_teachers_alone(env, tmp_path):
    result = distill(config(env, tmp_path / "kd-only", train_split="transfer", strategy=StrategyConfig("average")))
    assert result.report.history[0]["train_loss"] > 0
    assert any("fewer than two labeled classes" in w for w in result.warnings)


# ensembles


def test_votes_by_hand():
    # 3 students x 3 rows x 3 classes
    p = np.array([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.4, 0.35, 0.25]],
                  [[0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]],
                  [[0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.2, 0.65, 0.15]]])
    # votes: row 0 -> 0, 1, 0; row 1 -> 1, 2, 2; row 2 -> 0, 2, 1 (a three-way tie; mean of class 2 is highest)
    assert majority_vote(p).tolist() == [0, 2, 2]
    # mean probabilities: row 0 [.40 .50 .10]; row 1 [.20 .33 .47]; row 2 [.23 .37 .40]
    assert mean_probability_vote(p).tolist() == [1, 2, 2]


def test_report_ensemble_is_the_vote_of_the_saved_students(env, tmp_path):
    runs = [distill(config(env, tmp_path / f"s{seed}", seed=seed, strategy=StrategyConfig(s))).run_dir
            for seed, s in ((0, "expert"), (1, "average"), (2, "random"))]
    result = runner.invoke(app, ["report", *map(str, runs), "--ensemble", "--device", "cpu", "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output

    cache = open_cache(env["cache"])
    test = cache.inputs("test")
    predictions = []
    for run in runs:
        model, tokenizer = load_saved_student(run / "student")
        logits = predict_logits(model, tokenize_rows(tokenizer, test.texts, None, 128), tokenizer.pad_token_id,
                                torch.device("cpu"))
        predictions.append(torch.softmax(torch.from_numpy(logits), 1).numpy())
    stacked = np.stack(predictions)
    vote = []
    for row in range(stacked.shape[1]):
        counts = Counter(stacked[:, row].argmax(axis=1).tolist())
        top = max(counts.values())
        tied = [k for k, c in counts.items() if c == top]
        vote.append(max(tied, key=lambda k: stacked[:, row, k].mean()))
    vote_accuracy = float(np.mean(np.array(vote) == test.labels))
    mean_accuracy = float(np.mean(stacked.mean(axis=0).argmax(axis=1) == test.labels))
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert f"| ensemble: majority vote | {vote_accuracy:.4f} |" in markdown
    assert f"| ensemble: mean probability | {mean_accuracy:.4f} |" in markdown
    for run in runs:  # each member scores as its own report says
        accuracy = json.loads((run / "report.json").read_text())["accuracy"]
        assert f"| {run.name} | {accuracy:.4f} |" in markdown


def test_report_ensemble_user_errors(env, tmp_path):
    run = distill(config(env, tmp_path / "only")).run_dir
    one = runner.invoke(app, ["report", str(run), "--ensemble"])
    assert one.exit_code == 2 and "at least two runs" in one.output
    shutil.copytree(run, tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "student")
    unfinished = runner.invoke(app, ["report", str(run), str(tmp_path / "copy"), "--ensemble"])
    assert unfinished.exit_code == 2 and "not a finished run" in unfinished.output
    wrong_split = runner.invoke(app, ["report", str(run), str(run), "--ensemble", "--split", "dev"])
    assert wrong_split.exit_code == 2 and "split 'dev' is not in" in wrong_split.output


def test_predict_ensemble_votes_over_the_models(env, tmp_path):
    runs = [distill(config(env, tmp_path / f"p{seed}", seed=seed)).run_dir / "student" for seed in (0, 1, 2)]
    texts = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    args = ["predict", *map(str, runs), *[a for t in texts for a in ("--text", t)], "--ensemble", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["texts"]
    for row in rows:
        students = [row["predictions"][name] for name in row["predictions"] if not name.startswith("ensemble")]
        counts = Counter(p["label"] for p in students)
        vote = row["predictions"]["ensemble: vote"]
        assert counts[vote["label"]] == max(counts.values())
        assert vote["probability"] == pytest.approx(counts[vote["label"]] / 3, abs=1e-6)
    table = runner.invoke(app, args[:-1])
    assert table.exit_code == 0 and table.output.splitlines()[0].count("┳") == 6  # text, 3 models, agree, 2 ensembles
    alone = runner.invoke(app, ["predict", str(runs[0]), "--text", "x", "--ensemble"])
    assert alone.exit_code == 2 and "at least two models" in alone.output
