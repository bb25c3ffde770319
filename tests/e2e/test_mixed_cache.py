"""One cache, three kinds of teacher: two fine-tuned encoders, a causal LM scored on verbalizers, and logits
imported from a file. The expert table picks per class across all of them, every strategy selects from
them and a sweep distils from the mix without any teacher running again."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import mtkd_cache.runners.build
from helpers.causal_lms import make_causal_lm, write_prompt
from helpers.faults import shard_records
from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache, open_cache, verify_cache
from mtkd_cache.distillation.runs import DistillConfig, expert_table_for
from mtkd_cache.distillation.selection import select_teachers
from mtkd_cache.distillation.strategies import Strategy, StrategyConfig
from mtkd_cache.distillation.sweep import SweepConfig, SweepGrid, run_sweep
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache_cli.app import app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
cli = CliRunner()
TEACHERS = ("bert", "distil", "lm", "imported")


@pytest.fixture(scope="module")
def mixed(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    cache = root / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])), shard_rows=32, out=cache,
                            teachers=(TeacherSpec("bert", str(assets["bert"])), TeacherSpec("distil", str(assets["distil"])))))
    encoders = shard_records(cache)
    llama = make_causal_lm(root / "llama", "llama", seed=21)
    result = cli.invoke(app, ["build", "--dataset", str(assets["data"]), "--out", str(cache), "--shard-rows", "32",
                              "--backend", "causal-lm", "--teacher", f"lm={llama}", "--prompt",
                              str(write_prompt(root / "prompt.txt")), "--shots", "2", "--max-length", "256"])
    assert result.exit_code == 0, result.output
    # A file of logits computed elsewhere (here: the bert teacher's, negated, so it is a distinct teacher).
    opened = open_cache(cache)
    frames = []
    for split in opened.split_names:
        logits = -opened.teacher_outputs(split, ["bert"]).logits[:, 0].astype(np.float32)
        frames.append(pa.table({"split": [split] * len(logits), "sample_id": np.arange(len(logits)),
                                "logits": logits.tolist()}))
    pq.write_table(pa.concat_tables(frames), root / "elsewhere.parquet")
    imported = cli.invoke(app, ["import-logits", str(cache), "--teacher", "imported", "--file",
                                str(root / "elsewhere.parquet"), "--source", "another-team"])
    assert imported.exit_code == 0, imported.output
    return {"cache": cache, "encoders": encoders, "root": root, "tokenizer": str(assets["bert"])}


def test_adding_the_other_teachers_leaves_the_encoders_shards_untouched(mixed):
    after = shard_records(mixed["cache"])
    assert {path: after[path] for path in mixed["encoders"]} == mixed["encoders"]
    assert open_cache(mixed["cache"]).teacher_names == TEACHERS
    assert verify_cache(mixed["cache"]).ok
    info = json.loads(cli.invoke(app, ["info", str(mixed["cache"]), "--json"]).stdout)
    backends = {t["name"]: t["backend"] for t in info["teachers"]}
    assert backends == {"bert": "torch", "distil": "torch", "lm": "causal-lm", "imported": "imported"}


def test_the_expert_table_ranks_every_kind_of_teacher(mixed):
    table = expert_table_for(open_cache(mixed["cache"]), "validation", TEACHERS)
    assert table.teachers == TEACHERS and table.per_class_accuracy.shape == (4, 3)
    result = cli.invoke(app, ["experts", str(mixed["cache"]), "--split", "validation", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert list(shown["overall_accuracy"]) == list(TEACHERS)
    assert set(shown["experts"].values()) <= set(TEACHERS)


@pytest.mark.parametrize("strategy", [s.value for s in Strategy])
def test_every_strategy_selects_across_the_mix(mixed, strategy):
    selection = select_teachers(mixed["cache"], "train", StrategyConfig(strategy), TEACHERS, expert_split="validation")
    assert selection.teachers == TEACHERS and selection.weights.shape == (60, 4)
    assert np.isfinite(selection.weights).all()
    assert (selection.weights >= 0).all()
    if strategy != "none":  # the floor has no teacher: zero weights everywhere
        assert (selection.weights.sum(axis=1) > 0).all()  # mtbert's need not sum to 1
    assert selection.mean_weight == pytest.approx(dict(zip(TEACHERS, selection.weights.mean(axis=0))))
    if StrategyConfig(strategy).name.one_hot:
        assert sum(selection.followed.values()) == 60
    else:
        assert selection.followed is None


def test_a_sweep_distils_from_the_mix_without_running_a_teacher(mixed, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher ran during distillation")

    monkeypatch.setattr(mtkd_cache.runners.build, "make_runner", no_teacher)
    base = DistillConfig(cache=mixed["cache"], student="bert:layers=1,hidden=32,heads=2", tokenizer=mixed["tokenizer"],
                         out=mixed["root"] / "sweep", expert_split="validation",
                         train=TrainConfig(epochs=1, learning_rate=1e-3, device="cpu"))
    grid = SweepGrid(strategies=tuple(Strategy), subset_sizes=(3,))
    result = run_sweep(SweepConfig(base, grid))
    assert result.planned == len(Strategy) * 4 == len(result.rows)
    assert {row.strategy for row in result.rows} == {s.value for s in Strategy}
    assert any("lm" in row.teachers.split(",") for row in result.rows)
    assert (mixed["root"] / "sweep" / "leaderboard.parquet").is_file()
