"""The configs check themselves when built (messages name the CLI flag), take plain strings for their enums and
comma strings for teacher subsets, and serialise as the strings the reports and directory names use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtkd_cache.distillation.configs import DistillConfig, TransferStage
from mtkd_cache.distillation.strategies import Strategy, StrategyConfig
from mtkd_cache.distillation.sweep import SweepConfig, SweepGrid
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.errors import ConfigError


@pytest.mark.parametrize("build, message", [
    (lambda: TrainConfig(epochs=0), "--epochs must be at least 1."),
    (lambda: TrainConfig(epochs=1, warmup_epochs=2), "--warmup-epochs must be between 0 and --epochs."),
    (lambda: TrainConfig(patience=0), "--patience must be at least 1."),
    (lambda: StrategyConfig("oracle"), "--strategy must be one of expert, average, .* not 'oracle'"),
    (lambda: TransferStage("transfer", strategy="oracle"), "--stage1-strategy must be one of"),
    (lambda: DistillConfig(cache=Path(), student="s", out=Path(), alpha=2), "--alpha must be between 0 and 1"),
    (lambda: DistillConfig(cache=Path(), student="s", out=Path(), temperature=0), "--temperature must be positive"),
    (lambda: SweepConfig(DistillConfig(cache=Path(), student="s", out=Path()), metric="loss"), "--metric must be one of"),
])
def test_configs_refuse_bad_values_when_built(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_plain_strings_become_enums_and_tuples_and_serialise_as_before():
    strategy = StrategyConfig("expert-soft")
    assert strategy.name is Strategy.EXPERT_SOFT and strategy.name == "expert-soft" and f"{strategy.name}" == "expert-soft"
    assert json.dumps({"strategy": strategy.name}) == '{"strategy": "expert-soft"}'
    assert DistillConfig(cache=Path(), student="s", out=Path(), teachers="a, b").teachers == ("a", "b")
    assert SweepGrid(strategies=("random", Strategy.BEST)).strategies == (Strategy.RANDOM, Strategy.BEST)
