"""The leaderboard: ranked by the chosen metric, written atomically, and the metric is a closed set."""

from __future__ import annotations

import polars as pl
import pytest

from mtkd_cache.errors import ConfigError
from mtkd_cache.layout import LEADERBOARD, LEADERBOARD_MD, ROBUSTNESS, ROBUSTNESS_PLOT
from mtkd_cache.report.leaderboard import Metric, RunRow, write_leaderboard


def row(run: str, accuracy: float, mcc: float, seed: int) -> RunRow:
    return RunRow(run=run, strategy="expert", alpha=0.5, temperature=2.0, seed=seed, teachers="a,b", num_teachers=2,
                  accuracy=accuracy, macro_f1=accuracy, mcc=mcc, best_epoch=0, train_seconds=1.0, run_seconds=2.0,
                  status="trained")


def test_rows_are_ranked_by_the_metric_and_every_file_is_written(tmp_path):
    rows = [row("r0", 0.6, 0.9, 0), row("r1", 0.8, 0.1, 1)]
    frame = write_leaderboard(tmp_path, rows, Metric.MCC)
    assert frame["run"].to_list() == ["r0", "r1"]
    assert pl.read_parquet(tmp_path / LEADERBOARD)["run"].to_list() == ["r0", "r1"]
    assert write_leaderboard(tmp_path, rows, "accuracy")["run"].to_list() == ["r1", "r0"]
    spread = pl.read_parquet(tmp_path / ROBUSTNESS).row(0, named=True)
    assert (spread["worst"], spread["best"], spread["runs"]) == (0.6, 0.8, 2)
    assert "ranked by accuracy" in (tmp_path / LEADERBOARD_MD).read_text()
    assert (tmp_path / ROBUSTNESS_PLOT).stat().st_size > 0 and not list(tmp_path.glob(".tmp-*"))


def test_no_rows_yet_and_an_unknown_metric(tmp_path):
    write_leaderboard(tmp_path, [], "accuracy")
    assert "No run has finished yet" in (tmp_path / LEADERBOARD_MD).read_text()
    assert not (tmp_path / ROBUSTNESS).exists()
    with pytest.raises(ConfigError, match="--metric must be one of accuracy, macro_f1, mcc, not 'loss'"):
        write_leaderboard(tmp_path, [], "loss")
