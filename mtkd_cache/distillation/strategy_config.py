"""The selection strategies' names and options: torch-free, so a config (and `mtkd-cache --help`) can
name them without loading the tensors that strategies.py computes with."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtkd_cache.choices import Choice
from mtkd_cache.distillation.checks import require_in_range


class Strategy(Choice):
    """The selection strategies (DESIGN.md "Strategies"); the value is the CLI's and report's name."""

    EXPERT = "expert"
    AVERAGE = "average"
    RANDOM = "random"
    BEST = "best"
    CAMKD = "camkd"
    MTBERT = "mtbert"
    NOISY = "noisy"
    EXPERT_SOFT = "expert-soft"

    @classmethod
    def parse(cls, value: object, flag: str = "--strategy") -> Strategy:
        return super().parse(value, flag)


STRATEGY_NAMES = tuple(s.value for s in Strategy)


@dataclass(frozen=True)
class StrategyConfig:
    name: Strategy = field(default=Strategy.EXPERT, metadata={"help": f"One of {', '.join(STRATEGY_NAMES)}."})
    noise_std: float = field(default=1.0, metadata={"help": "noisy: sigma of the logit noise."})
    gamma: float = field(default=2.0, metadata={"help": "expert-soft: sharpening exponent."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", Strategy.parse(self.name))  # a plain string is accepted too
        require_in_range("--noise-std", self.noise_std, 0)
        require_in_range("--gamma", self.gamma, 0)
