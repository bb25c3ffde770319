"""The strategies that use the cache's gold labels (`expert-gold`, `correct`), the no-teacher floor (`none`),
the confidence-aware expert table and per-teacher temperature calibration, each against a plain per-sample
Python reference written from its docstring, on the random caches of test_strategies (ties, |S| = 0 and > 1,
classes where every accuracy is 0, unlabeled rows, one teacher)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.manifests import write_tiny_cache
from helpers.strategy_inputs import SHAPES, Cache, assert_weights, make_cache, one_hot, ref_expert, run
from mtkd_cache.distillation.configs import DistillConfig
from mtkd_cache.distillation.experts import (
    beta_cdf,
    beta_quantile,
    compute_expert_table,
    fit_temperatures,
    probability_greater,
)
from mtkd_cache.distillation.session import PreparedCache
from mtkd_cache.distillation.strategies import Combine, Strategy, StrategyConfig
from mtkd_cache.errors import ConfigError

# ------------------------------------------------------------------------------------------ references


def ref_claim_accuracy(c: Cache, b: int) -> tuple[int, bool]:
    N = len(c.L[0])
    claimants = [n for n in range(N) if c.E[c.P[b][n]] == n]
    if not claimants:
        return c.M, True
    best = max(claimants, key=lambda n: (c.acc[n][c.P[b][n]], -n))  # ties: the first in the subset's order
    return best, False


def ref_expert_gold(c: Cache, config: StrategyConfig):
    N = len(c.L[0])
    thesis_weights, thesis_fell_back = ref_expert(c, config)
    weights, fell_back = [], []
    for b in range(len(c.P)):
        if c.y[b] >= 0:
            weights.append(one_hot(c.E[c.y[b]], N))
            fell_back.append(False)
        elif config.unlabeled == "thesis":
            weights.append(thesis_weights[b])
            fell_back.append(thesis_fell_back[b])
        else:
            chosen, nobody = ref_claim_accuracy(c, b)
            weights.append(one_hot(chosen, N))
            fell_back.append(nobody)
    return weights, fell_back


def ref_correct(c: Cache, config: StrategyConfig):
    N = len(c.L[0])
    weights = []
    for b in range(len(c.P)):
        y = c.y[b]
        if y < 0:
            weights.append(one_hot(c.M, N))
            continue
        right = [n for n in range(N) if c.P[b][n] == y]
        if not right:
            weights.append([0.0] * N if config.correct_fallback == "gold" else one_hot(c.M, N))
            continue
        trust = [c.acc[n][y] if n in right else 0.0 for n in range(N)]
        if sum(trust) == 0:
            trust = [1.0 if n in right else 0.0 for n in range(N)]
        weights.append([t / sum(trust) for t in trust])
    return weights, None


CASES = [("expert-gold", {"unlabeled": "thesis"}), ("expert-gold", {"unlabeled": "claim-accuracy"}),
         ("correct", {"correct_fallback": "best"}), ("correct", {"correct_fallback": "gold"})]


@pytest.mark.parametrize("num_teachers,num_labels", SHAPES)
@pytest.mark.parametrize("name,options", CASES)
def test_label_aware_strategies_match_their_references(name, options, num_teachers, num_labels):
    c = make_cache(num_teachers, num_labels, seed=31 * num_teachers + num_labels)
    config = StrategyConfig(name=name, **options)
    signal = run(name, c, **options)
    reference = ref_expert_gold if name == "expert-gold" else ref_correct
    weights, fell_back = reference(c, config)
    assert_weights(signal.weights, weights)
    assert torch.equal(signal.logits, c.logits)
    if name == "expert-gold":
        assert signal.combine is Combine.LOGITS and signal.fell_back.tolist() == fell_back
    else:
        assert signal.combine is Combine.LOSSES and signal.fell_back is None


@pytest.mark.parametrize("num_teachers,num_labels", [(2, 4), (3, 7), (5, 7)])
def test_the_caches_reach_every_branch_of_correct(num_teachers, num_labels):
    c = make_cache(num_teachers, num_labels, seed=31 * num_teachers + num_labels)
    labeled = [b for b in range(len(c.P)) if c.y[b] >= 0]
    right = {b: [n for n in range(num_teachers) if c.P[b][n] == c.y[b]] for b in labeled}
    assert any(not r for r in right.values())  # nobody right: the fallback
    assert any(len(r) > 1 for r in right.values())  # several right: a mixture
    assert any(r and all(c.acc[n][c.y[b]] == 0 for n in r) for b, r in right.items())  # right, all at accuracy 0


def test_expert_gold_follows_the_gold_class_expert_even_when_it_predicts_wrong():
    c = make_cache(3, 4, seed=3)
    signal = run("expert-gold", c)
    for b in range(len(c.P)):
        if c.y[b] >= 0:
            assert int(signal.weights[b].argmax()) == c.E[c.y[b]]


def test_none_has_zero_weights_and_forces_alpha_one():
    c = make_cache(3, 4, seed=4)
    signal = run("none", c)
    assert signal.combine is Combine.LOSSES and not signal.weights.any()
    config = DistillConfig(cache="c", student="bilstm", out="o", strategy=StrategyConfig("none"), alpha=0.3)
    assert config.alpha == 1.0


def test_one_hot_is_what_followed_can_count():
    one_hot_names = {s.value for s in Strategy if s.one_hot}
    assert one_hot_names == {"expert", "random", "best", "noisy", "expert-gold"}


def test_bad_options_are_refused_naming_the_flag():
    with pytest.raises(ConfigError, match="--unlabeled must be one of thesis, claim-accuracy"):
        StrategyConfig("expert-gold", unlabeled="nearest")
    with pytest.raises(ConfigError, match="--correct-fallback must be one of best, gold"):
        StrategyConfig("correct", correct_fallback="m")
    with pytest.raises(ConfigError, match=r"--expert-confidence must be in \[0.5, 1\)"):
        StrategyConfig(expert_confidence=1.0)


# ------------------------------------------------------------------- the confidence-aware expert table

def test_beta_cdf_quantile_and_probability_greater_agree_with_sampling():
    rng = np.random.default_rng(0)
    for a1, b1, a2, b2 in [(9, 3, 7, 5), (1, 1, 1, 1), (50, 2, 45, 7), (2, 30, 1, 31), (4, 1, 3, 2)]:
        x, y = rng.beta(a1, b1, 400_000), rng.beta(a2, b2, 400_000)
        assert probability_greater(a1, b1, a2, b2) == pytest.approx((x > y).mean(), abs=4e-3)
        assert beta_cdf(0.6, a1, b1) == pytest.approx((x <= 0.6).mean(), abs=4e-3)
        assert beta_quantile(0.025, a1, b1) == pytest.approx(np.quantile(x, 0.025), abs=4e-3)
    assert probability_greater(3, 3, 3, 3) == pytest.approx(0.5)


def _table(correct_per_class: list[list[int]], counts: list[int]):
    """A table from exact counts: teacher n gets correct_per_class[n][k] of the counts[k] rows of class k right."""
    labels, preds = [], []
    num_teachers = len(correct_per_class)
    for k, count in enumerate(counts):
        for row in range(count):
            labels.append(k)
            preds.append([k if row < correct_per_class[n][k] else (k + 1) % len(counts) for n in range(num_teachers)])
    return compute_expert_table(np.array(preds), np.array(labels), ("a", "b"), ("x", "y"), "validation")


def test_a_lucky_expert_on_few_rows_gives_way_to_m():
    # a: 20/20 on x, 2/4 on y (overall 22/24 = M); b: 4/4 on y. On 4 rows, b beats a with P ≈ 0.93.
    table = _table([[20, 2], [10, 4]], [20, 4])
    assert table.fallback_name == "a" and table.teachers[table.experts[1]] == "b"
    better = table.probability_better_than_fallback()
    assert 0.9 < better[1, 1] < 0.96
    assert table.with_confidence(0.9).teachers[table.with_confidence(0.9).experts[1]] == "b"
    strict = table.with_confidence(0.99)
    assert strict.teachers[strict.experts[1]] == "a" and strict.to_json()["confidence"] == 0.99
    assert list(strict.experts[:1]) == list(table.experts[:1])  # M's own classes are untouched


def test_credible_intervals_hold_the_accuracy_and_shrink_with_rows():
    small, large = _table([[3, 1], [2, 2]], [4, 4]), _table([[75, 25], [50, 50]], [100, 100])
    low, high = small.credible_intervals()
    big_low, big_high = large.credible_intervals()
    assert (low <= small.per_class_accuracy).all() and (small.per_class_accuracy <= high).all()
    assert ((big_high - big_low) < (high - low)).all()


def test_intervals_at_zero_and_one_accuracy_are_one_sided_and_hold_the_accuracy():
    table = _table([[4, 0], [0, 4]], [4, 4])
    low, high = table.credible_intervals()
    assert high[0, 0] == 1.0 and low[0, 0] == pytest.approx(beta_quantile(0.05, 5, 1))
    assert low[0, 1] == 0.0 and high[0, 1] == pytest.approx(beta_quantile(0.95, 1, 5))


def test_a_class_without_rows_has_no_interval():
    table = compute_expert_table(np.array([[0, 0], [0, 1]]), np.array([0, 0]), ("a", "b"), ("x", "y"), "v")
    low, _ = table.credible_intervals()
    assert np.isnan(low[:, 1]).all() and not np.isnan(low[:, 0]).any()


# ------------------------------------------------------------------------------- temperature calibration

def test_calibration_recovers_a_known_temperature_per_teacher():
    rng = np.random.default_rng(1)
    rows, classes = 6000, 5
    scores = rng.normal(size=(rows, classes)) * 2.0
    labels = np.array([rng.choice(classes, p=np.exp(s) / np.exp(s).sum()) for s in scores])
    # teacher 0 is calibrated; teacher 1 is 3x overconfident; teacher 2 is 2x underconfident
    logits = np.stack([scores, scores * 3.0, scores / 2.0], axis=1)
    fitted = fit_temperatures(logits, labels)
    assert fitted == pytest.approx([1.0, 3.0, 0.5], rel=0.08)
    labels[:100] = -1  # unlabeled rows are ignored
    assert fit_temperatures(logits, labels) == pytest.approx(fitted, rel=0.05)


# ---------------------------------------------------------------- through the cache (PreparedCache)

def test_calibrated_signals_divide_each_teachers_logits_by_its_fitted_temperature(tmp_path):
    write_tiny_cache(tmp_path / "c", splits={"train": 10, "validation": 12}, teachers=("t1", "t2"))
    prepared = PreparedCache(tmp_path / "c")
    plain = prepared.signal(StrategyConfig("average"), ("t1", "t2"), "train", "validation", 0, 0)
    calibrated_config = StrategyConfig("average", calibrate=True)
    calibrated = prepared.signal(calibrated_config, ("t1", "t2"), "train", "validation", 0, 0)
    table = prepared.strategy_table(calibrated_config, "validation", ("t1", "t2"))
    logits, _ = prepared.teacher_tensors("validation", ("t1", "t2"))
    expected = fit_temperatures(logits.numpy(), prepared.inputs("validation").labels)
    assert table.temperatures == pytest.approx(expected) and table.to_json()["temperatures"]["t1"] == expected[0]
    torch.testing.assert_close(calibrated.logits, plain.logits / torch.tensor(expected).float()[None, :, None])
    assert prepared.strategy_table(StrategyConfig("average"), "validation", ("t1", "t2")).temperatures is None
