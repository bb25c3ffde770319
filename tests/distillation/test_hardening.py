"""Hardening of runs and their inputs (issue #14): non-finite options and losses, run directories that are not
ours, options a model cannot take, full disks, and a teacher left incomplete by an interrupted build.

Each test reproduces an attack of the adversarial run and checks the answer: one `error:` line, exit 2, and
nothing half-written (a fresh --out is removed again; another directory is left byte for byte)."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers.cli import assert_user_error
from helpers.reference import build_teacherless_cache
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.distillation.configs import DistillConfig
from mtkd_cache.distillation.run import check_output_file, check_run_directory
from mtkd_cache.distillation.runs import distill
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.sweep import SweepConfig, SweepGrid
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import CHECKPOINT, RUN_CONFIG, STUDENT_DIR, SWEEP_RUN_DONE
from mtkd_cache_cli.app import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
STUDENT = "bilstm:embed=16,hidden=16"


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    return {"cache": build_teacherless_cache(assets, root), "tokenizer": str(assets["bert"]), "assets": assets}


def distill_args(env, out: Path, *extra: str, student: str = STUDENT) -> list[str]:
    return ["distill", str(env["cache"]), "--student", student, "--tokenizer", env["tokenizer"], "--out", str(out),
            "--epochs", "1", "--lr", "1e-3", "--device", "cpu", "--expert-split", "validation", *extra]


def sweep_args(env, out: Path, *extra: str) -> list[str]:
    return ["sweep", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"], "--out", str(out),
            "--epochs", "1", "--lr", "1e-3", "--device", "cpu", "--expert-split", "validation", *extra]


def assert_error_after_progress(result, *fragments: str) -> None:
    """A user error raised mid-training: exit 2, no traceback, one `error:` line after the progress bar's last
    frame (the bar is drawn on stderr too when the error stops it)."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def snapshot(directory: Path) -> dict[Path, bytes]:
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# ------------------------------------------------------------------- item 3: non-finite options and losses


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda: DistillConfig(cache=Path("c"), student="s", out=Path("o"), temperature=math.nan), "--temperature"),
    (lambda: DistillConfig(cache=Path("c"), student="s", out=Path("o"), temperature=math.inf), "--temperature"),
    (lambda: DistillConfig(cache=Path("c"), student="s", out=Path("o"), alpha=math.nan), "--alpha"),
    (lambda: TrainConfig(learning_rate=math.inf), "--lr"),
    (lambda: TrainConfig(learning_rate=math.nan), "--lr"),
    (lambda: TrainConfig(weight_decay=-math.inf), "--weight-decay"),
    (lambda: TrainConfig(max_grad_norm=math.nan), "--max-grad-norm"),
    (lambda: TrainConfig(warmup_ratio=math.nan), "--warmup-ratio"),
    (lambda: TrainConfig(max_length=-1), "--max-length must be at least 1"),
    (lambda: StrategyConfig(noise_std=math.nan), "--noise-std"),
    (lambda: StrategyConfig(gamma=math.inf), "--gamma"),
    (lambda: StrategyConfig(noise_std=-1.0), "--noise-std"),
    (lambda: SweepGrid(alphas=(0.5, 2.0)), "--alpha"),
    (lambda: SweepGrid(alphas=(math.nan,)), "--alpha"),
    (lambda: SweepGrid(temperatures=(math.inf,)), "--temperature"),
    (lambda: SweepGrid(temperatures=(0.0,)), "--temperature"),
    (lambda: SweepConfig(base=DistillConfig(cache=Path("c"), student="s", out=Path("o")), max_minutes=math.nan),
     "--max-minutes"),
])
def test_non_finite_or_out_of_range_options_are_refused_naming_the_flag(make, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make()


@pytest.mark.parametrize("extra", [["--temperature", "nan"], ["--temperature", "inf"], ["--lr", "inf"],
                                   ["--alpha", "nan"], ["--max-length", "-1"]])
def test_distill_refuses_non_finite_options_before_creating_out(env, tmp_path, extra):
    out = tmp_path / "run"
    assert_user_error(runner.invoke(app, distill_args(env, out, *extra)), extra[0])
    assert not out.exists()


def test_a_loss_turning_non_finite_stops_the_run_and_keeps_the_last_finite_checkpoint(env, tmp_path, monkeypatch):
    # Bad cached targets from epoch 2 on (the `random` strategy draws its targets every epoch).
    draw = PreparedCache.signal

    def poisoned(self, strategy, teachers, split, expert_split, seed, epoch):
        signal = draw(self, strategy, teachers, split, expert_split, seed, epoch)
        if epoch >= 1:
            signal.logits = torch.full_like(signal.logits, math.nan)
        return signal

    monkeypatch.setattr(PreparedCache, "signal", poisoned)
    out = tmp_path / "run"
    config = DistillConfig(cache=env["cache"], student=STUDENT, tokenizer=env["tokenizer"], out=out,
                           expert_split="validation", strategy=StrategyConfig("random"),
                           train=TrainConfig(epochs=2, learning_rate=1e-3, device="cpu"))
    with pytest.raises(ConfigError, match=r"training diverged: the loss became nan at epoch 2, step 1 .*"
                                          r"keeps the checkpoint of epoch 1") as raised:
        distill(config)
    assert "\n" not in str(raised.value)
    state = torch.load(out / CHECKPOINT, weights_only=False)
    assert state["epoch"] == 0 and len(state["result"]["history"]) == 1
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())
    assert not (out / "report.json").exists()
    monkeypatch.undo()
    # The kept state is never resumed by a run with fixed options: their fingerprint differs.
    fixed = DistillConfig(**{**config.__dict__, "train": TrainConfig(epochs=2, learning_rate=1e-4, device="cpu")})
    with pytest.raises(ConfigError, match="another configuration"):
        distill(fixed)


def test_an_extreme_but_finite_learning_rate_diverges_into_one_error_line(env, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, distill_args(env, out, "--lr", "1e30", student="bert:layers=1,hidden=32,heads=2"))
    assert_error_after_progress(result, "training diverged", "at epoch 1, step", "no checkpoint was written")
    assert not out.exists()  # a fresh --out with nothing to resume is removed again


# ------------------------------------------------------------ item 4: a run directory must be ours or new


def test_the_run_directory_rule(tmp_path):
    check_run_directory(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_run_directory(tmp_path / "empty")
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / f".tmp-{RUN_CONFIG}.123").write_text("{")  # only a killed writer's temporary: nothing of value
    check_run_directory(killed)
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / RUN_CONFIG).write_text(json.dumps({"alpha": 0.5, "fingerprint": "f" * 64}))
    check_run_directory(ours)
    resumable = tmp_path / "resumable"
    resumable.mkdir()
    torch.save({"fingerprint": "x"}, resumable / CHECKPOINT)
    check_run_directory(resumable)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model_type": "bert"}))  # a model's config.json, no fingerprint
    with pytest.raises(ConfigError, match="not an mtkd-cache run .*config.json.*new or empty directory"):
        check_run_directory(teacher)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_run_directory(tmp_path / "file")
    with pytest.raises(ConfigError, match="is a directory"):
        check_output_file(tmp_path / "empty")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_output_file(tmp_path / "file" / "weights.parquet")


def test_distill_and_finetune_refuse_a_teachers_directory_untouched(env, tmp_path):
    teacher = shutil.copytree(env["assets"]["bert"], tmp_path / "teacher")
    before = snapshot(teacher)
    assert_user_error(runner.invoke(app, distill_args(env, teacher)), "not an mtkd-cache run")
    result = runner.invoke(app, ["finetune", "--dataset", str(env["assets"]["data"]), "--model", STUDENT,
                                 "--tokenizer", env["tokenizer"], "--out", str(teacher), "--epochs", "1",
                                 "--device", "cpu"])
    assert_user_error(result, "not an mtkd-cache run")
    assert snapshot(teacher) == before


def test_sweep_refuses_a_foreign_out_and_a_foreign_run_directory(env, tmp_path):
    teacher = shutil.copytree(env["assets"]["bert"], tmp_path / "teacher")
    before = snapshot(teacher)
    assert_user_error(runner.invoke(app, sweep_args(env, teacher)), "not an mtkd-cache run")
    assert snapshot(teacher) == before
    # A sweep's own directory whose run directory was replaced by something else: that run is refused.
    sweep = tmp_path / "sweep"
    assert runner.invoke(app, sweep_args(env, sweep)).exit_code == 0
    (run_dir,) = (sweep / "runs").iterdir()
    shutil.rmtree(run_dir)
    shutil.copytree(teacher, run_dir)
    assert_user_error(runner.invoke(app, sweep_args(env, sweep)), "not an mtkd-cache run")
    assert snapshot(run_dir) == before


# ------------------------------------------------------ items 9, 10: options a model or a path cannot take


@pytest.mark.parametrize(("student", "extra", "fragments"), [
    ("bert:hidden=33,heads=2", [], ["hidden (33) must be a multiple of heads (2)"]),
    ("bert:layers=0,hidden=32,heads=2", [], ["layers must be at least 1, not 0"]),
    ("bilstm:hidden=0", [], ["hidden must be at least 1"]),
    ("bert:layers=1,hidden=32,heads=2", ["--max-length", "100000"], ["--max-length 100000", "position limit 512"]),
])
def test_a_student_that_cannot_be_built_or_fed_is_refused(env, tmp_path, student, extra, fragments):
    out = tmp_path / "run"
    assert_user_error(runner.invoke(app, distill_args(env, out, *extra, student=student)), *fragments)
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused_by_distill_sweep_and_select(env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    assert_user_error(runner.invoke(app, distill_args(env, blocker)), "is a file")
    assert_user_error(runner.invoke(app, sweep_args(env, blocker)), "is a file")
    select = ["select", str(env["cache"]), "--strategy", "average", "--expert-split", "validation"]
    assert_user_error(runner.invoke(app, [*select, "--out", str(blocker / "w.parquet")]), "is a file, not a directory")
    assert_user_error(runner.invoke(app, [*select, "--out", str(tmp_path)]), "is a directory")
    assert blocker.read_text() == "keep"


def test_a_refused_sweep_grid_leaves_no_out_behind(env, tmp_path):
    for extra in (["--alpha", "2"], ["--temperature", "nan"], ["--alpha", "0.5", "--alpha", "0.5"]):
        out = tmp_path / "sweep"
        result = runner.invoke(app, sweep_args(env, out, *extra))
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert not out.exists(), extra


def _refuse_writes_of(monkeypatch, name: str, error: int = errno.ENOSPC) -> None:
    """The kernel's answer to writing `name` (through atomic's os.replace) simulated; other files are written."""
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(target).name == name:
            raise OSError(error, os.strerror(error))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr("mtkd_cache.atomic.os.replace", replace)


@pytest.mark.fault
@pytest.mark.parametrize("name", [RUN_CONFIG, CHECKPOINT])
def test_a_full_disk_while_writing_a_run_is_one_line_and_leaves_no_fresh_out(env, tmp_path, monkeypatch, name):
    out = tmp_path / "run"
    _refuse_writes_of(monkeypatch, name)
    assert_error_after_progress(runner.invoke(app, distill_args(env, out)), "No space left on device", "free disk space")
    assert not out.exists()


@pytest.mark.fault
def test_a_read_only_out_is_one_line(env, tmp_path, monkeypatch):
    # Simulated: root (as on CI) ignores directory permissions, so a chmod cannot refuse the write.
    _refuse_writes_of(monkeypatch, RUN_CONFIG, errno.EACCES)
    assert_error_after_progress(runner.invoke(app, distill_args(env, tmp_path / "run")), "Permission denied")
    assert_error_after_progress(runner.invoke(app, sweep_args(env, tmp_path / "sweep")), "Permission denied")
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
    _refuse_writes_of(monkeypatch, "w.parquet", errno.EACCES)
    result = runner.invoke(app, ["select", str(env["cache"]), "--strategy", "average", "--expert-split", "validation",
                                 "--out", str(tmp_path / "w.parquet")])
    assert_user_error(result, "Permission denied")
    assert not list(tmp_path.iterdir())


@pytest.mark.fault
def test_a_full_disk_while_a_sweep_records_a_run_keeps_it_resumable(env, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    _refuse_writes_of(monkeypatch, SWEEP_RUN_DONE)
    assert_error_after_progress(runner.invoke(app, sweep_args(env, out)), "No space left on device")
    (run_dir,) = (out / "runs").iterdir()
    assert (run_dir / CHECKPOINT).exists() and not (run_dir / SWEEP_RUN_DONE).exists()
    assert not list(out.rglob(".tmp-*"))
    monkeypatch.undo()
    again = runner.invoke(app, sweep_args(env, out))
    assert again.exit_code == 0, again.output
    assert (run_dir / SWEEP_RUN_DONE).exists() and (run_dir / STUDENT_DIR).is_dir()


# --------------------------------------------- item 11: a teacher left incomplete blocks only who reads it


@pytest.fixture
def half_built_cache(env, tmp_path) -> Path:
    """The test cache as a build interrupted while adding teacher `distil` would leave it: one of its train
    shards is not committed."""
    cache = shutil.copytree(env["cache"], tmp_path / "cache")
    manifest = load_manifest(cache)
    dropped = manifest.shards_of("train", "distil")[-1]
    manifest.shards = [record for record in manifest.shards if record is not dropped]
    manifest.save(cache)
    return cache


def test_an_incomplete_teacher_blocks_only_the_commands_that_read_it(env, tmp_path, half_built_cache):
    cache = str(half_built_cache)
    only_bert = ["--teachers", "bert"]
    run = ["distill", cache, "--student", STUDENT, "--tokenizer", env["tokenizer"], "--epochs", "1", "--lr", "1e-3",
           "--device", "cpu", "--expert-split", "validation"]
    result = runner.invoke(app, [*run, "--out", str(tmp_path / "bert-only"), *only_bert])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["experts", cache, "--split", "train", *only_bert, "--json"])
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["overall_accuracy"]) == ["bert"]
    result = runner.invoke(app, ["select", cache, "--strategy", "expert", "--expert-split", "validation", *only_bert,
                                 "--out", str(tmp_path / "w.parquet")])
    assert result.exit_code == 0, result.output
    # Naming the incomplete teacher (or every teacher) is still refused, saying which one and what to do.
    assert_user_error(runner.invoke(app, [*run, "--out", str(tmp_path / "all")]), "teacher 'distil'",
                      "incomplete", "mtkd-cache build")
    assert not (tmp_path / "all").exists()
