"""The quality statistics of a sweep, recomputed by hand from fixed inputs: means and spreads over seeds,
paired differences to the floor and to `average`, and the exact sign-flip p-value."""

from __future__ import annotations

import itertools
import statistics

import pytest

from mtkd_cache.layout import LEADERBOARD_MD
from mtkd_cache.report.leaderboard import RunRow, leaderboard_frame, write_leaderboard
from mtkd_cache.report.quality import paired_difference, quality_markdown, quality_table, sign_flip_p_value


def row(strategy: str, seed: int, accuracy: float, alpha: float = 0.5, teachers: str = "a,b") -> RunRow:
    return RunRow(run=f"{strategy}-{seed}", strategy=strategy, alpha=alpha, temperature=2.0, seed=seed,
                  teachers=teachers, num_teachers=2, accuracy=accuracy, macro_f1=accuracy, mcc=accuracy,
                  best_epoch=1, train_seconds=1.0, run_seconds=1.0, status="trained")


FLOOR = [0.90, 0.91, 0.89, 0.92, 0.90]
EXPERT = [0.93, 0.93, 0.92, 0.95, 0.94]  # +0.03, +0.02, +0.03, +0.03, +0.04 over the floor, seed by seed
AVERAGE = [0.92, 0.90, 0.91, 0.95, 0.92]


def frame():
    rows = [row("none", s, a, alpha=1.0) for s, a in enumerate(FLOOR)]
    rows += [row("expert", s, a) for s, a in enumerate(EXPERT)] + [row("average", s, a) for s, a in enumerate(AVERAGE)]
    return leaderboard_frame(rows, "accuracy")


def test_sign_flip_p_value_enumerates_every_sign():
    assert sign_flip_p_value([0.01] * 5) == pytest.approx(2 / 32)  # only all-plus and all-minus are as extreme
    differences = [0.03, -0.01, 0.02]
    observed = abs(statistics.fmean(differences))
    by_hand = sum(abs(statistics.fmean(s * d for s, d in zip(signs, differences))) >= observed - 1e-12
                  for signs in itertools.product((1, -1), repeat=3)) / 8
    assert sign_flip_p_value(differences) == by_hand
    assert sign_flip_p_value([]) == 1.0 and sign_flip_p_value([0.0, 0.0]) == 1.0
    many = [0.01] * 200  # hundreds of pairs (seeds × teacher subsets): sampled, and it still finishes
    assert sign_flip_p_value(many) < 1e-4 and sign_flip_p_value([0.01, -0.01] * 100) == 1.0


def test_paired_differences_pair_by_seed_and_subset_only():
    scores = {(0, "a"): 0.9, (1, "a"): 0.8, (2, "a"): 0.7}
    reference = {(0, "a"): 0.85, (1, "a"): 0.8, (3, "a"): 0.1}
    difference = paired_difference(scores, reference)
    assert difference.pairs == 2 and difference.mean == pytest.approx(0.025)
    assert difference.sd == pytest.approx(statistics.stdev([0.05, 0.0]))
    assert paired_difference(scores, {(9, "z"): 1.0}) is None


def test_the_quality_table_from_a_fixed_leaderboard():
    table = {q.strategy: q for q in quality_table(frame(), "accuracy", ["strategy", "alpha", "temperature"])}
    assert list(table) == ["expert", "average", "none"]  # best mean first
    expert = table["expert"]
    assert (expert.runs, expert.mean, expert.sd) == (5, pytest.approx(statistics.fmean(EXPERT)),
                                                     pytest.approx(statistics.stdev(EXPERT)))
    gains = [e - f for e, f in zip(EXPERT, FLOOR)]
    assert expert.versus_floor.mean == pytest.approx(statistics.fmean(gains))
    assert expert.versus_floor.sd == pytest.approx(statistics.stdev(gains))
    assert expert.versus_floor.beyond_two_sd and expert.versus_floor.p_value == pytest.approx(2 / 32)
    versus_average = [e - a for e, a in zip(EXPERT, AVERAGE)]
    assert expert.versus_average.mean == pytest.approx(statistics.fmean(versus_average))
    assert not expert.versus_average.beyond_two_sd  # +0.014 ± 0.011: within two sd
    assert table["none"].versus_floor is None and table["average"].versus_average is None
    lines = quality_markdown(list(table.values()), "accuracy")
    assert lines[2].startswith("| expert | 0.5 | 2 | 5 | ") and "✓" in lines[2] and "p=0.062" in lines[2]


def test_the_leaderboard_carries_the_paired_table_when_the_floor_ran(tmp_path):
    rows = [row("none", s, a, alpha=1.0) for s, a in enumerate(FLOOR)] + [row("expert", s, a) for s, a in enumerate(EXPERT)]
    write_leaderboard(tmp_path, rows, "accuracy")
    text = (tmp_path / LEADERBOARD_MD).read_text()
    assert "Against the no-teacher floor" in text and "| expert | 0.5 | 2 | 5 |" in text and "✓" in text
    write_leaderboard(tmp_path, rows[5:], "accuracy")
    assert "Add `--strategy none`" in (tmp_path / LEADERBOARD_MD).read_text()
