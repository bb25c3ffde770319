"""Under torchrun on CPU (gloo, 2 processes): distill with DistributedDataParallel against the same run in one
process, sweep spreading its runs over ranks, and build splitting shards over ranks — bit-identical to a
1-rank build, and finished by 1 rank after one of 2 ranks was killed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from mtkd_cache import BuildConfig, DatasetSpec, TeacherSpec, build_cache, open_cache
from mtkd_cache.distributed import balanced_assignment
from mtkd_cache_cli.app import app

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]
runner = CliRunner()
# No dropout: the 2-rank gradient is then the 1-process gradient up to float summation order.
STUDENT = "bilstm:embed=16,hidden=16,dropout=0"


def torchrun(args: list[str], fault: str | None = None, fault_rank: int | None = None) -> subprocess.CompletedProcess:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                       TOKENIZERS_PARALLELISM="false")
    environment.pop("MTKD_CACHE_FAULT", None)
    if fault:
        environment["MTKD_CACHE_FAULT"] = fault
        environment["MTKD_CACHE_FAULT_RANK"] = str(fault_rank)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mtkd_cache", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def env(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    cache = root / "cache"
    build_cache(BuildConfig(dataset=DatasetSpec(source=str(assets["data"])), out=cache, shard_rows=16,
                            teachers=(TeacherSpec("a", str(assets["bert"])), TeacherSpec("b", str(assets["distil"])))))
    return {"root": root, "cache": cache, "tokenizer": str(assets["bert"]), "assets": assets}


def distill_args(env, out: Path, strategy: str = "random") -> list[str]:
    return ["distill", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"], "--out", str(out),
            "--epochs", "3", "--lr", "1e-2", "--batch-size", "7", "--device", "cpu", "--strategy", strategy,
            "--expert-split", "validation"]


def test_two_rank_distill_matches_one_process(env, tmp_path):
    two = torchrun(distill_args(env, tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = runner.invoke(app, distill_args(env, tmp_path / "one"))
    assert one.exit_code == 0, one.output
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("two", "one")]
    assert reports[0].keys() == reports[1].keys()
    for key in ("accuracy", "macro_f1", "mcc"):  # stated tolerance: 0.02 absolute (same data, same batches)
        assert abs(reports[0][key] - reports[1][key]) <= 0.02, key
    losses = [[h["train_loss"] for h in r["history"]] for r in reports]
    assert np.allclose(losses[0], losses[1], rtol=1e-4), losses
    assert [h["selection_score"] for h in reports[0]["history"]] == pytest.approx(
        [h["selection_score"] for h in reports[1]["history"]], abs=0.02)
    # rank 0 alone wrote the run directory: one config, one checkpoint, no leftovers
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_two_rank_sweep_spreads_runs_and_writes_one_leaderboard(env, tmp_path):
    args = ["sweep", str(env["cache"]), "--student", STUDENT, "--tokenizer", env["tokenizer"], "--out",
            str(tmp_path / "sweep"), "--strategy", "expert", "--strategy", "average", "--seed", "0", "--seed", "1",
            "--epochs", "1", "--lr", "1e-2", "--device", "cpu", "--expert-split", "validation"]
    result = torchrun(args)
    assert result.returncode == 0, result.stderr[-3000:]
    board = pl.read_parquet(tmp_path / "sweep" / "leaderboard.parquet")
    assert board.height == 4 and board["status"].to_list() == ["trained"] * 4
    assert result.stdout.count("leaderboard (by accuracy)") == 1  # rank 1 stays quiet
    again = runner.invoke(app, args)  # one process finds every run finished, whichever rank trained it
    assert "0 run(s) trained, 4 finished earlier and skipped" in again.output


def test_balanced_assignment_by_cost():
    parts = balanced_assignment([10, 1, 1, 1, 9, 2], 2)
    assert sorted(i for p in parts for i in p) == list(range(6))
    loads = [sum([10, 1, 1, 1, 9, 2][i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= 1
    assert balanced_assignment([5, 5], 3) == [[0], [1], []]


# build


def build_args(env, out: Path) -> list[str]:
    return ["build", "--dataset", str(env["assets"]["data"]), "--teacher", f"a={env['assets']['bert']}",
            "--teacher", f"b={env['assets']['distil']}", "--out", str(out), "--shard-rows", "8"]


def _outputs(cache_dir: Path) -> dict:
    cache = open_cache(cache_dir)
    return {split: (cache.inputs(split).texts, cache.inputs(split).labels.tolist(),
                    cache.teacher_outputs(split).logits.view(np.uint16).tolist(), cache.teacher_outputs(split).preds.tolist())
            for split in cache.split_names}


@pytest.fixture(scope="module")
def one_rank_cache(env):
    out = env["root"] / "one-rank"
    assert runner.invoke(app, build_args(env, out)).exit_code == 0
    return out


def test_two_rank_build_is_bit_identical_to_one_rank(env, one_rank_cache, tmp_path):
    result = torchrun(build_args(env, tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _outputs(tmp_path / "two") == _outputs(one_rank_cache)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert len(manifest["shards"]) == len(json.loads((one_rank_cache / "manifest.json").read_text())["shards"])
    assert not (tmp_path / "two" / ".receipts").exists()
    assert f"{len(manifest['shards'])} shard(s) written" in " ".join(result.stderr.split())  # every rank's shards
    # rank 0's progress says it is rank 0's share of the split, not the split
    assert re.search(r"a · train \(rank 0: [\d,]+ of 60 rows, 2 ranks\)", result.stderr), result.stderr[-2000:]


@pytest.mark.fault
def test_a_killed_rank_then_one_rank_completes_the_cache(env, one_rank_cache, tmp_path):
    out = tmp_path / "killed"
    # Rank 1 dies at its 4th teacher batch; torchrun then stops rank 0.
    killed = torchrun(build_args(env, out), fault="teacher_batch:4", fault_rank=1)
    assert killed.returncode != 0
    receipts = list((out / ".receipts").glob("*.json"))
    assert receipts  # rank 1 finished some shards before it died
    resumed = runner.invoke(app, build_args(env, out))
    assert resumed.exit_code == 0, resumed.output
    assert "kept" in resumed.output and "interrupted build" in resumed.output
    assert _outputs(out) == _outputs(one_rank_cache)
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    assert not (out / ".receipts").exists()


def test_receipts_are_adopted_only_when_shard_and_teacher_check_out(env, tmp_path):
    import dataclasses
    import shutil

    from mtkd_cache.cache.manifest import load_manifest
    from mtkd_cache.cache.receipts import RECEIPTS_DIR, adopt_receipts, write_receipt

    cache = tmp_path / "cache"
    shutil.copytree(env["cache"], cache)
    manifest = load_manifest(cache)
    teacher = manifest.teachers["a"]
    shards = manifest.shards_of("train", "a")
    # Three receipts for shards the manifest has lost: one good, one whose bytes changed, one of another teacher.
    manifest.shards = [s for s in manifest.shards if s not in shards[:3]]
    write_receipt(cache, shards[0], teacher)
    write_receipt(cache, dataclasses.replace(shards[1], sha256="0" * 64), teacher)
    write_receipt(cache, shards[2], dataclasses.replace(teacher, weights_sha256="f" * 64))
    assert adopt_receipts(cache, manifest, {"a": teacher}) == 1
    assert manifest.shard("train", "a", shards[0].row_start) == shards[0]
    assert manifest.shard("train", "a", shards[1].row_start) is None
    assert manifest.shard("train", "a", shards[2].row_start) is None
    assert not (cache / RECEIPTS_DIR).exists()  # every receipt is consumed, adopted or not
