"""sweep: grid expansion, k-combinations, one load of the cache, resume after SIGKILL, a run inside a sweep
equal to the same run alone, the leaderboard and robustness tables recomputed here, the time budget, and
the CLI with a TOML / YAML file and its user errors."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

import mtkd_cache.data.batching
import mtkd_cache.distillation.session
from helpers.assets import make_teacher
from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache
from mtkd_cache.cache.verify import verify_cache
from mtkd_cache.distillation.runs import DistillConfig, distill
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.sweep import (
    DONE_MARKER,
    RUNS_DIR,
    SweepConfig,
    SweepGrid,
    expand_grid,
    load_sweep_file,
    run_sweep,
    sweep_config_from_options,
)
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import STUDENT_INPUTS_DIR
from mtkd_cache.report.leaderboard import write_leaderboard
from mtkd_cache_cli.app import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
STUDENT = "bert:layers=1,hidden=32,heads=2"
TEACHERS = ("a", "b", "c")


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    third = make_teacher(root / "c", "bert", seed=3)
    sources = {"a": assets["bert"], "b": assets["distil"], "c": third}
    cache = root / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])),
                            teachers=tuple(TeacherSpec(n, str(p)) for n, p in sources.items()), out=cache, shard_rows=32))
    return {"root": root, "cache": cache, "tokenizer": str(assets["bert"])}


def base_config(env, out: Path, epochs: int = 1, **changes) -> DistillConfig:
    return DistillConfig(cache=env["cache"], student=STUDENT, tokenizer=env["tokenizer"], out=out,
                         expert_split="validation",
                         train=TrainConfig(epochs=epochs, learning_rate=1e-3, device="cpu"), **changes)


# grid expansion


def test_grid_is_the_product_of_its_axes_with_every_k_combination(env, tmp_path):
    grid = SweepGrid(strategies=("expert", "random"), alphas=(0.3, 0.7), temperatures=(1.0,), seeds=(0, 1, 2),
                     subset_sizes=(1, 2))
    runs = expand_grid(SweepConfig(base_config(env, tmp_path), grid), TEACHERS)
    subsets = [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c")]
    assert len(runs) == 2 * 2 * 1 * 3 * len(subsets)
    points = {(r.config.strategy.name, r.config.alpha, r.config.temperature, r.config.train.seed,
               r.config.teachers) for r in runs}
    assert points == set(itertools.product(("expert", "random"), (0.3, 0.7), (1.0,), (0, 1, 2), subsets))
    assert len({r.name for r in runs}) == len(runs)
    # every other option is the base's
    assert {(r.config.train.epochs, r.config.student, r.config.expert_split) for r in runs} == {(1, STUDENT, "validation")}


def test_the_no_teacher_floor_is_one_run_per_seed_and_subset_whatever_alpha_and_t(env, tmp_path):
    grid = SweepGrid(strategies=("expert", "none"), alphas=(0.3, 0.7), temperatures=(1.0, 4.0), seeds=(0, 1))
    runs = expand_grid(SweepConfig(base_config(env, tmp_path), grid), TEACHERS)
    floors = [r for r in runs if r.config.strategy.name == "none"]
    assert len(runs) == 2 * 2 * 2 + 2 and [r.name for r in floors] == ["none-s0-a+b+c", "none-s1-a+b+c"]
    assert {(r.config.alpha, r.config.temperature) for r in floors} == {(1.0, 1.0)}
    # same seed, same schedule as the distilled runs: the paired comparison is over seeds
    expert = next(r for r in runs if r.config.strategy.name == "expert" and r.config.train.seed == 1)
    assert floors[1].config.train == expert.config.train and floors[1].config.student == expert.config.student


def test_strategy_options_reach_every_run_from_a_file(env, tmp_path):
    options = {"cache": env["cache"], "student": STUDENT, "out": tmp_path, "strategy": ["expert-gold", "correct"],
               "unlabeled": "claim-accuracy", "correct_fallback": "gold", "expert_confidence": 0.9, "calibrate": True}
    config = sweep_config_from_options(options)
    strategy = config.base.strategy
    assert (strategy.unlabeled, strategy.correct_fallback, strategy.expert_confidence, strategy.calibrate) == (
        "claim-accuracy", "gold", 0.9, True)
    assert {r.config.strategy.calibrate for r in expand_grid(config, TEACHERS)} == {True}
    with pytest.raises(ConfigError, match="calibrate: 'yes' is not true or false"):
        sweep_config_from_options({**options, "calibrate": "yes"})


def test_subsets_are_drawn_from_the_given_pool_and_default_to_the_whole_pool(env, tmp_path):
    whole = expand_grid(SweepConfig(base_config(env, tmp_path)), TEACHERS)
    assert [r.config.teachers for r in whole] == [("a", "b", "c")]
    pool = expand_grid(SweepConfig(base_config(env, tmp_path, teachers=("c", "a")), SweepGrid(subset_sizes=(1, 2))), TEACHERS)
    assert [r.config.teachers for r in pool] == [("c",), ("a",), ("c", "a")]


@pytest.mark.parametrize("grid, message", [
    ({"subset_sizes": (4,)}, "between 1 and 3"),
    ({"subset_sizes": (0,)}, "between 1 and 3"),
    ({"strategies": ("expert", "oracle")}, "oracle"),
    ({"alphas": (0.5, 0.5)}, "repeats a value"),
    ({"seeds": ()}, "--seed needs at least one value"),
])
def test_bad_grids_are_refused_by_name(env, tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):  # by the grid itself, or when it meets the teacher pool
        expand_grid(SweepConfig(base_config(env, tmp_path), SweepGrid(**grid)), TEACHERS)


# one load, and a run inside a sweep equals the same run alone


def test_a_run_inside_a_sweep_equals_the_same_run_alone(env, tmp_path, monkeypatch):
    selections = []
    real_select = mtkd_cache.distillation.session.select
    monkeypatch.setattr(mtkd_cache.distillation.session, "select", lambda *a, **k: selections.append(a[0].name) or real_select(*a, **k))
    grid = SweepGrid(strategies=("expert", "random"), alphas=(0.3, 0.7), seeds=(0, 1), subset_sizes=(2,))
    config = SweepConfig(base_config(env, tmp_path / "sweep", epochs=2), grid)
    result = run_sweep(config)
    assert len(result.rows) == result.planned == 2 * 2 * 2 * 3 and not result.stopped_by_budget
    # `expert` targets once per subset (3), whatever the seed and alpha; `random` drawn per (run, epoch).
    assert selections.count("expert") == 3
    assert selections.count("random") == 2 * 2 * 3 * 2

    row = next(r for r in result.rows if (r.strategy, r.alpha, r.seed, r.teachers) == ("random", 0.7, 1, "a,c"))
    alone = distill(dataclasses.replace(base_config(env, tmp_path / "alone", epochs=2), strategy=StrategyConfig("random"),
                                        alpha=0.7, teachers=("a", "c"), train=TrainConfig(epochs=2, learning_rate=1e-3,
                                                                                      device="cpu", seed=1)))
    inside = tmp_path / "sweep" / RUNS_DIR / row.run
    report_inside = json.loads((inside / "report.json").read_text())
    for key in ("accuracy", "macro_f1", "mcc", "confusion_matrix", "followed", "best_epoch"):
        assert report_inside[key] == alone.report.to_json()[key], key
    assert [h["train_loss"] for h in report_inside["history"]] == [h.train_loss for h in alone.train.history]
    weights_inside = load_file(inside / "student" / "model.safetensors")
    weights_alone = load_file(alone.run_dir / "student" / "model.safetensors")
    assert all(np.array_equal(weights_inside[k].numpy(), weights_alone[k].numpy()) for k in weights_alone)
    # each run directory is a complete distill run
    for file in ("run.json", "report.json", "report.md", "per_class_diff.png", "metrics.jsonl", DONE_MARKER):
        assert (inside / file).is_file(), file


def test_tokens_are_kept_on_disk_and_reused_by_the_next_process(env, tmp_path, monkeypatch):
    run_sweep(SweepConfig(base_config(env, tmp_path / "first")))
    saved = sorted((env["cache"] / STUDENT_INPUTS_DIR).glob("*.npz"))
    assert {p.name.split("-")[0] for p in saved} >= {"train", "validation", "test"}
    report = verify_cache(env["cache"])
    assert report.ok and report.stray_files == []  # derived files are not strays

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(mtkd_cache.distillation.session, "tokenize_rows", no_tokenizing)
    first = json.loads(next((tmp_path / "first" / RUNS_DIR).glob("*/report.json")).read_text())
    again = run_sweep(SweepConfig(base_config(env, tmp_path / "second")))
    assert again.rows[0].accuracy == first["accuracy"]

    # A damaged token file is recomputed, not trusted.
    monkeypatch.setattr(mtkd_cache.distillation.session, "tokenize_rows", mtkd_cache.data.batching.tokenize_rows)
    for path in saved:
        path.write_bytes(path.read_bytes()[:40])
    prepared = PreparedCache(env["cache"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(env["tokenizer"])
    tokens = prepared.tokens(tokenizer, 128, "train")
    expected = mtkd_cache.data.batching.tokenize_rows(tokenizer, prepared.inputs("train").texts, None, 128)
    assert np.array_equal(tokens.ids, expected.ids) and np.array_equal(tokens.offsets, expected.offsets)


# resume


def _sweep_args(env, out: Path, *extra: str) -> list[str]:
    return ["sweep", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"], "--out", str(out),
            "--strategy", "average", "--strategy", "noisy", "--seed", "0", "--seed", "1", "--epochs", "2",
            "--lr", "1e-3", "--batch-size", "4", "--device", "cpu", "--expert-split", "validation", *extra]


def _subprocess_env(fault: str | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    env.pop("MTKD_CACHE_FAULT", None)
    if fault:
        env["MTKD_CACHE_FAULT"] = fault
    return env


@pytest.mark.fault
def test_a_killed_sweep_resumes_and_ends_like_an_uninterrupted_one(env, tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    # The 3rd epoch checkpoint: run 1 is finished, run 2 has one of its two epochs.
    process = subprocess.run([sys.executable, "-m", "mtkd_cache", *_sweep_args(env, killed)],
                             env=_subprocess_env("epoch_checkpointed:3"), capture_output=True, text=True, timeout=300)
    assert process.returncode == -9, process.stderr
    runs = sorted((killed / RUNS_DIR).iterdir())
    assert [(r / DONE_MARKER).exists() for r in runs] == [True, False]
    assert not list(killed.glob("**/.tmp-*"))

    resumed = runner.invoke(app, _sweep_args(env, killed))
    assert resumed.exit_code == 0, resumed.output
    assert "3 run(s) trained, 1 finished earlier and skipped, of 4 planned" in resumed.output
    history = [json.loads(line) for line in (runs[1] / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]  # resumed at epoch 2, not restarted

    assert runner.invoke(app, _sweep_args(env, straight)).exit_code == 0
    columns = ["run", "accuracy", "macro_f1", "mcc", "best_epoch"]
    assert (pl.read_parquet(killed / "leaderboard.parquet").select(columns).sort("run").rows()
            == pl.read_parquet(straight / "leaderboard.parquet").select(columns).sort("run").rows())

    # A third invocation has nothing left to do.
    again = runner.invoke(app, _sweep_args(env, killed))
    assert "0 run(s) trained, 4 finished earlier and skipped" in again.output


def test_the_time_budget_stops_between_runs_and_a_rerun_continues(env, tmp_path):
    stopped = run_sweep(SweepConfig(base_config(env, tmp_path), SweepGrid(seeds=(0, 1)), max_minutes=0))
    assert stopped.stopped_by_budget and stopped.rows == [] and stopped.planned == 2
    finished = run_sweep(SweepConfig(base_config(env, tmp_path), SweepGrid(seeds=(0, 1))))
    assert [r.status for r in finished.rows] == ["trained", "trained"]
    assert [r.status for r in run_sweep(SweepConfig(base_config(env, tmp_path), SweepGrid(seeds=(0, 1)))).rows] \
        == ["skipped", "skipped"]


def test_changed_options_make_new_runs_instead_of_reusing_old_ones(env, tmp_path):
    first = run_sweep(SweepConfig(base_config(env, tmp_path)))
    longer = run_sweep(SweepConfig(base_config(env, tmp_path, epochs=2)))
    assert longer.rows[0].status == "trained" and longer.rows[0].run != first.rows[0].run


# leaderboard and robustness


def test_leaderboard_and_robustness_are_the_runs_summarised(env, tmp_path):
    grid = SweepGrid(strategies=("best", "average"), seeds=(0, 1), subset_sizes=(1, 3))
    result = run_sweep(SweepConfig(base_config(env, tmp_path), grid))
    # run_sweep wrote the leaderboard itself (no CLI involved); writing it again from the rows gives the same.
    written = {name: (tmp_path / name).read_bytes() for name in ("leaderboard.parquet", "robustness.parquet")}
    assert result.leaderboard.equals(pl.read_parquet(tmp_path / "leaderboard.parquet"))
    frame = write_leaderboard(tmp_path, result.rows, "accuracy")
    assert all(pl.read_parquet(tmp_path / name).equals(pl.read_parquet(io.BytesIO(data)))
               for name, data in written.items())
    board = pl.read_parquet(tmp_path / "leaderboard.parquet")
    assert board.height == len(result.rows) == 2 * 2 * 4
    assert board["accuracy"].to_list() == sorted(board["accuracy"].to_list(), reverse=True)
    for row in result.rows:  # every run's metrics are its report's
        report = json.loads((tmp_path / RUNS_DIR / row.run / "report.json").read_text())
        assert (row.accuracy, row.macro_f1, row.mcc) == (report["accuracy"], report["macro_f1"], report["mcc"])
    robustness = pl.read_parquet(tmp_path / "robustness.parquet")
    for strategy, size in itertools.product(("best", "average"), (1, 3)):
        scores = [r.accuracy for r in result.rows if r.strategy == strategy and r.num_teachers == size]
        got = robustness.filter((pl.col("strategy") == strategy) & (pl.col("num_teachers") == size)).row(0, named=True)
        assert got["worst"] == min(scores) and got["best"] == max(scores)
        assert got["mean"] == pytest.approx(statistics.fmean(scores))
        assert got["runs"] == len(scores) == (3 if size == 1 else 1) * 2
        assert got["subsets"] == (3 if size == 1 else 1)
    text = (tmp_path / "leaderboard.md").read_text()
    assert "Robustness over seeds" in text and "subsets of each size" in text
    assert (tmp_path / "robustness.png").stat().st_size > 0 and frame.height == board.height


# options files and the CLI


def test_toml_and_yaml_files_give_the_same_sweep(env, tmp_path):
    (tmp_path / "grid.toml").write_text(
        f'cache = "{env["cache"]}"\nstudent = "{STUDENT}"\nout = "{tmp_path / "o"}"\nstrategy = ["expert", "average"]\n'
        'alpha = [0.5, 0.9]\nteacher-subsets = 2\nepochs = 2\nlr = 0.001\nnoise_std = 0.5\n')
    (tmp_path / "grid.yaml").write_text(
        f'cache: {env["cache"]}\nstudent: "{STUDENT}"\nout: {tmp_path / "o"}\nstrategy: [expert, average]\n'
        'alpha: [0.5, 0.9]\nteacher_subsets: [2]\nepochs: 2\nlr: 0.001\nnoise_std: 0.5\n')
    from_toml = sweep_config_from_options(load_sweep_file(tmp_path / "grid.toml"))
    assert from_toml == sweep_config_from_options(load_sweep_file(tmp_path / "grid.yaml"))
    assert from_toml.grid == SweepGrid(strategies=("expert", "average"), alphas=(0.5, 0.9), subset_sizes=(2,))
    assert (from_toml.base.train.epochs, from_toml.base.train.learning_rate, from_toml.base.strategy.noise_std) == (2, 1e-3, 0.5)


@pytest.mark.parametrize("options, message", [
    ({"alfa": [0.5]}, "unknown sweep option.*alfa"),
    ({"alpha": ["high"]}, "alpha: 'high' is not a valid float"),
    ({"epochs": [1, 2]}, "epochs"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"student": None}, "needs student"),
])
def test_bad_options_are_refused_by_name(env, tmp_path, options, message):
    base = {"cache": env["cache"], "student": STUDENT, "out": tmp_path}
    with pytest.raises(ConfigError, match=message):
        sweep_config_from_options({**base, **options})


def test_cli_sweep_from_a_file_with_flags_overriding_it(env, tmp_path):
    (tmp_path / "grid.toml").write_text(f'student = "{STUDENT}"\ntokenizer = "{env["tokenizer"]}"\n'
                                        'strategy = ["expert", "best"]\nseed = [0, 1]\nepochs = 3\ndevice = "cpu"\n')
    result = runner.invoke(app, ["sweep", str(env["cache"]), "--out", str(tmp_path / "out"), "--config",
                                 str(tmp_path / "grid.toml"), "--epochs", "1", "--seed", "5", "--metric", "macro_f1"])
    assert result.exit_code == 0, result.output
    board = pl.read_parquet(tmp_path / "out" / "leaderboard.parquet")
    assert sorted(board["strategy"].to_list()) == ["best", "expert"] and set(board["seed"]) == {5}
    assert board["macro_f1"].to_list() == sorted(board["macro_f1"].to_list(), reverse=True)
    assert all(h["epoch"] == 1 for run in (tmp_path / "out" / RUNS_DIR).iterdir()
               for h in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()))
    assert "leaderboard" in result.output and "sweep / loops" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--teacher-subsets", "5"], "between 1 and 3"),
    (["--strategy", "oracle"], "oracle"),
    (["--config", "missing.toml"], "does not exist"),
    (["--metric", "loss"], "--metric must be one of"),
    (["--train-split", "dev"], "--train-split dev"),
])
def test_cli_user_errors_exit_2_with_one_line(env, tmp_path, extra, message):
    result = runner.invoke(app, ["sweep", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"],
                                 "--out", str(tmp_path / "out"), "--epochs", "1", "--device", "cpu", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
