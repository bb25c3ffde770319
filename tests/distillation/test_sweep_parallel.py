"""sweep --parallel N: N worker processes on one device train the grid's runs to the very results of a
sweep that trains them one after another, resume like it, and a bad N is a one-line error."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers.cli import assert_user_error
from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache
from mtkd_cache.distillation.runs import DistillConfig
from mtkd_cache.distillation.sweep import DONE_MARKER, RUNS_DIR, SweepConfig, SweepGrid, run_sweep
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.errors import ConfigError
from mtkd_cache_cli.app import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STUDENT = "bert:layers=1,hidden=32,heads=2"
GRID = SweepGrid(strategies=("expert", "average"), seeds=(0, 1))


@pytest.fixture(scope="module")
def cache(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])), out=out, shard_rows=32,
                            teachers=(TeacherSpec("a", str(assets["bert"])), TeacherSpec("b", str(assets["distil"])))))
    return out


def _sweep(cache, tokenizer, out, parallel: int):
    base = DistillConfig(cache=cache, student=STUDENT, tokenizer=tokenizer, out=out, expert_split="validation",
                         train=TrainConfig(epochs=1, learning_rate=1e-3, device="cpu"))
    return run_sweep(SweepConfig(base=base, grid=GRID, parallel=parallel))


def _scores(result) -> dict:
    return {row.run: (row.accuracy, row.macro_f1, row.mcc, row.best_epoch) for row in result.rows}


@pytest.mark.slow
def test_parallel_workers_train_every_run_to_the_sequential_results(assets, cache, tmp_path):
    one_by_one = _sweep(cache, str(assets["bert"]), tmp_path / "serial", parallel=1)
    parallel = _sweep(cache, str(assets["bert"]), tmp_path / "parallel", parallel=2)
    assert [row.status for row in parallel.rows] == ["trained"] * 4
    assert _scores(parallel) == _scores(one_by_one)
    for row in one_by_one.rows:
        weights = [load_file(tmp_path / side / RUNS_DIR / row.run / "student" / "model.safetensors")
                   for side in ("serial", "parallel")]
        assert weights[0].keys() == weights[1].keys()
        assert all((weights[0][k] == weights[1][k]).all() for k in weights[0]), row.run
    leaderboard = (tmp_path / "parallel" / "leaderboard.md").read_text()
    assert all(row.run in leaderboard for row in parallel.rows)
    # A second invocation finds every run done and trains nothing.
    again = _sweep(cache, str(assets["bert"]), tmp_path / "parallel", parallel=2)
    assert [row.status for row in again.rows] == ["skipped"] * 4
    assert all((tmp_path / "parallel" / RUNS_DIR / row.run / DONE_MARKER).exists() for row in again.rows)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_parallel_must_be_a_positive_whole_number(cache, tmp_path, bad):
    base = DistillConfig(cache=cache, student=STUDENT, out=tmp_path / "x")
    with pytest.raises(ConfigError, match="--parallel must be a whole number of at least 1"):
        SweepConfig(base=base, parallel=bad)


def test_parallel_from_the_command_line(assets, cache, tmp_path):
    result = CliRunner().invoke(app, ["sweep", str(cache), "--student", STUDENT, "--tokenizer", str(assets["bert"]),
                                      "--out", str(tmp_path / "s"), "--parallel", "0"])
    assert_user_error(result, "--parallel must be a whole number of at least 1")
    assert not (tmp_path / "s").exists()
