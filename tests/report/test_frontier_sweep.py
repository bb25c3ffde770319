"""The sweep leaderboard's student fields: which student, its kind, parameters and ms/sample, recomputed from
the saved students of the sweep's runs."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from helpers.reference import build_teacherless_cache
from mtkd_cache.distillation.students import count_parameters, load_saved_student
from mtkd_cache.layout import LEADERBOARD, LEADERBOARD_MD, RUN_REPORT, STUDENT_DIR, SWEEP_RUNS_DIR
from mtkd_cache_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_leaderboard_rows_carry_the_students_size_and_speed(assets, tmp_path):
    import json

    cache = build_teacherless_cache(assets, tmp_path)
    student = f"static:{assets['bert']},dims=8,hidden=16"
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(cache), "--student", student, "--out", str(out), "--strategy", "average",
                                 "--seed", "0", "--seed", "1", "--epochs", "1", "--lr", "1e-2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out / LEADERBOARD)
    assert frame.height == 2
    for row in frame.iter_rows(named=True):
        run_dir = out / SWEEP_RUNS_DIR / row["run"]
        model, _ = load_saved_student(run_dir / STUDENT_DIR)
        assert row["student"] == student and row["student_kind"] == "static"
        assert row["parameters"] == count_parameters(model)
        assert row["ms_per_sample"] == json.loads((run_dir / RUN_REPORT).read_text())["ms_per_sample"] > 0
    assert "parameters" in (out / LEADERBOARD_MD).read_text()
