"""The Run: one identity for distill alone and inside a sweep, the checkpoint read once to resume, another
run's directory refused untouched, and what a killed writer left behind cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.reference import build_teacherless_cache
from mtkd_cache import open_cache
from mtkd_cache.distillation.configs import DistillConfig, TransferStage
from mtkd_cache.distillation.run import Run, RunIdentity
from mtkd_cache.distillation.runs import distill, distill_identity
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.students import BILSTM_WEIGHTS
from mtkd_cache.distillation.sweep import RUNS_DIR, SweepConfig, SweepGrid, expand_grid, run_sweep
from mtkd_cache.distillation.training import TrainConfig, recover_interrupted_writes
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import CHECKPOINT, RUN_CONFIG, STAGE1_DIR, STUDENT_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STUDENT = "bilstm:embed=16,hidden=16"


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    return {"cache": build_teacherless_cache(assets, root), "tokenizer": str(assets["bert"])}


def config(env, out: Path, **changes) -> DistillConfig:
    changes = {"train": TrainConfig(epochs=1, learning_rate=1e-3, device="cpu"), **changes}
    return DistillConfig(cache=env["cache"], student=STUDENT, tokenizer=env["tokenizer"], out=out,
                         expert_split="validation", **changes)


# identity


def test_the_identity_leaves_out_where_things_live_and_keeps_everything_else():
    base = RunIdentity({"out": "a", "cache": "c", "alpha": 0.5}, {"cache_fingerprint": "f"})
    assert RunIdentity({"out": "b", "cache": "d", "alpha": 0.5}, {"cache_fingerprint": "f"}).fingerprint == base.fingerprint
    assert RunIdentity({"out": "a", "cache": "c", "alpha": 0.6}, {"cache_fingerprint": "f"}).fingerprint != base.fingerprint
    assert RunIdentity({"out": "a", "cache": "c", "alpha": 0.5}, {"cache_fingerprint": "g"}).fingerprint != base.fingerprint


def test_strategy_options_are_part_of_the_identity(env, tmp_path):
    cache = open_cache(env["cache"])
    noisy = distill_identity(config(env, tmp_path, strategy=StrategyConfig("noisy", noise_std=1.0)), cache)
    noisier = distill_identity(config(env, tmp_path, strategy=StrategyConfig("noisy", noise_std=2.0)), cache)
    assert noisy.fingerprint != noisier.fingerprint
    assert (noisy.config["strategy"], noisy.config["noise_std"]) == ("noisy", 1.0)


def test_a_sweep_run_is_named_by_the_identity_distill_alone_records(env, tmp_path):
    alone = distill(config(env, tmp_path / "alone", strategy=StrategyConfig("average")))
    sweep = SweepConfig(config(env, tmp_path / "sweep"), SweepGrid(strategies=("average",)))
    [row] = run_sweep(sweep).rows
    recorded = json.loads((alone.run_dir / RUN_CONFIG).read_text())["fingerprint"]
    inside = json.loads((tmp_path / "sweep" / RUNS_DIR / row.run / RUN_CONFIG).read_text())["fingerprint"]
    assert inside == recorded and row.run.endswith(f"-{recorded[:10]}")
    [planned] = expand_grid(sweep, open_cache(env["cache"]).teacher_names)
    assert distill_identity(planned.config, open_cache(env["cache"])).fingerprint == recorded


# resume check


def test_resuming_reads_the_checkpoint_once(env, tmp_path, monkeypatch):
    run_config = config(env, tmp_path / "run", stage1=TransferStage("validation"))
    distill(run_config)
    reads = []
    real_load = torch.load

    def counting_load(path, *args, **kwargs):
        if Path(str(path)).name == CHECKPOINT:
            reads.append(Path(path).relative_to(tmp_path / "run"))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    again = distill(run_config)  # every epoch is done: the run resumes past its end and reports again
    assert sorted(map(str, reads)) == sorted([CHECKPOINT, f"{STAGE1_DIR}/{CHECKPOINT}"])
    assert again.train.best_epoch == 0 and len(again.train.history) == 1


def test_a_run_directory_cannot_be_taken_for_a_transformers_checkpoint_and_old_ones_still_resume(env, tmp_path):
    import dataclasses

    from transformers import AutoConfig

    from mtkd_cache.distillation.run import read_run_config
    from mtkd_cache.layout import LEGACY_RUN_CONFIG
    from mtkd_cache.serve.ensemble import _run_config

    run_config = dataclasses.replace(config(env, tmp_path / "run"), student="bert:layers=1,hidden=32,heads=2")
    first = distill(run_config)
    # No config.json that is not a model's: the student directory is the one checkpoint in a run directory.
    assert RUN_CONFIG == "run.json" and not (first.run_dir / LEGACY_RUN_CONFIG).exists()
    assert AutoConfig.from_pretrained(first.run_dir / STUDENT_DIR).num_labels == 3
    # A run directory written before the rename: its record is config.json.
    (first.run_dir / RUN_CONFIG).rename(first.run_dir / LEGACY_RUN_CONFIG)
    recorded = read_run_config(first.run_dir)
    assert recorded["fingerprint"] == _run_config(first.run_dir)["fingerprint"]
    again = distill(run_config)  # recognized as this run, resumed past its end
    assert len(again.train.history) == 1 and again.report.accuracy == first.report.accuracy
    assert json.loads((first.run_dir / RUN_CONFIG).read_text())["fingerprint"] == recorded["fingerprint"]
    assert not (first.run_dir / LEGACY_RUN_CONFIG).exists()


def test_another_runs_directory_is_refused_untouched(tmp_path):
    run = Run(tmp_path / "run", RunIdentity({"alpha": 0.5}, {}))
    run.start(student_kind="hf")
    before = (tmp_path / "run" / RUN_CONFIG).read_bytes()
    torch.save({"fingerprint": "another run"}, tmp_path / "run" / CHECKPOINT)
    with pytest.raises(ConfigError, match="another configuration; choose a new --out"):
        run.checkpoint()
    (tmp_path / "run" / STAGE1_DIR).mkdir()
    torch.save({"fingerprint": run.fingerprint}, tmp_path / "run" / STAGE1_DIR / CHECKPOINT)
    with pytest.raises(ConfigError, match="another configuration"):  # stage 1 has a fingerprint of its own
        run.checkpoint(STAGE1_DIR)
    assert (tmp_path / "run" / RUN_CONFIG).read_bytes() == before
    assert json.loads(before)["fingerprint"] == run.fingerprint and json.loads(before)["student_kind"] == "hf"


def test_a_student_moved_aside_by_a_kill_is_recovered_and_temporaries_removed(tmp_path):
    (tmp_path / f".tmp-{STUDENT_DIR}.123.old").mkdir()
    (tmp_path / f".tmp-{STUDENT_DIR}.123.old" / "model.safetensors").write_text("best")
    (tmp_path / f".tmp-{STUDENT_DIR}.456").mkdir()  # a half-saved new best
    (tmp_path / f".tmp-{CHECKPOINT}.789").write_text("half a checkpoint")
    recover_interrupted_writes(tmp_path)
    assert (tmp_path / STUDENT_DIR / "model.safetensors").read_text() == "best"
    assert sorted(p.name for p in tmp_path.iterdir()) == [STUDENT_DIR]
    (tmp_path / f".tmp-{STUDENT_DIR}.321.old").mkdir()  # the swap finished: the aside copy is stale
    recover_interrupted_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STUDENT_DIR]


@pytest.mark.fault
def test_a_kill_inside_the_checkpoint_write_resumes_from_the_previous_epoch(env, tmp_path):
    killed = tmp_path / "killed"
    args = ["distill", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"], "--out", str(killed),
            "--epochs", "2", "--lr", "1e-3", "--device", "cpu", "--expert-split", "validation"]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                       MTKD_CACHE_FAULT="checkpoint_written:2")  # epoch 2's checkpoint written, not yet renamed
    process = subprocess.run([sys.executable, "-m", "mtkd_cache", *args], env=environment, capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == -9, process.stderr
    assert torch.load(killed / CHECKPOINT, weights_only=False)["epoch"] == 0
    assert [p.name.startswith(f".tmp-{CHECKPOINT}.") for p in killed.glob(".tmp-*")] == [True]

    two_epochs = TrainConfig(epochs=2, learning_rate=1e-3, device="cpu")
    resumed = distill(config(env, killed, train=two_epochs))
    straight = distill(config(env, tmp_path / "straight", train=two_epochs))
    assert [h.train_loss for h in resumed.train.history] == [h.train_loss for h in straight.train.history]
    a, b = (torch.load(run.run_dir / STUDENT_DIR / BILSTM_WEIGHTS, weights_only=True) for run in (resumed, straight))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not list(killed.rglob(".tmp-*"))
