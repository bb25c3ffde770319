"""The selection strategies' names and options: torch-free, so a config (and `mtkd-cache --help`) can
name them without loading the tensors that strategies.py computes with."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtkd_cache.choices import Choice
from mtkd_cache.distillation.checks import require_in_range
from mtkd_cache.errors import ConfigError


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
    EXPERT_GOLD = "expert-gold"
    CORRECT = "correct"
    NONE = "none"  # the no-teacher floor: the same student, seed and batches with alpha = 1 and no KD term

    @classmethod
    def parse(cls, value: object, flag: str = "--strategy") -> Strategy:
        return super().parse(value, flag)

    @property
    def one_hot(self) -> bool:
        """Does every row follow exactly one teacher? Then "followed" counts rows; else mean weights tell."""
        return self in {Strategy.EXPERT, Strategy.RANDOM, Strategy.BEST, Strategy.NOISY, Strategy.EXPERT_GOLD}


class UnlabeledRule(Choice):
    """How `expert-gold` treats a row without a gold label."""

    THESIS = "thesis"  # the `expert` rule: the one claiming teacher, else M
    CLAIM_ACCURACY = "claim-accuracy"  # the claiming teacher most accurate on the class it claims, else M


class CorrectFallback(Choice):
    """What `correct` does on a labeled row that no teacher got right."""

    BEST = "best"  # follow M
    GOLD = "gold"  # no KD term: the gold label alone


STRATEGY_NAMES = tuple(s.value for s in Strategy)


@dataclass(frozen=True)
class StrategyConfig:
    name: Strategy = field(default=Strategy.EXPERT, metadata={"help": f"One of {', '.join(STRATEGY_NAMES)}."})
    noise_std: float = field(default=1.0, metadata={"help": "noisy: sigma of the logit noise."})
    gamma: float = field(default=2.0, metadata={"help": "expert-soft: sharpening exponent."})
    unlabeled: UnlabeledRule = field(default=UnlabeledRule.THESIS, metadata={
        "help": "expert-gold, rows without a label: thesis (the expert rule) or claim-accuracy (the claiming "
                "teacher most accurate on its claim)."})
    correct_fallback: CorrectFallback = field(default=CorrectFallback.BEST, metadata={
        "help": "correct, a labeled row no teacher got right: best (follow M) or gold (the label alone)."})
    expert_confidence: float | None = field(default=None, metadata={
        "help": "Keep a class's expert only when it beats M there with this posterior probability (e.g. 0.9); "
                "else M. Off by default."})
    calibrate: bool = field(default=False, metadata={
        "help": "Divide each teacher's logits by its temperature, fitted by NLL on the expert split."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", Strategy.parse(self.name))  # a plain string is accepted too
        object.__setattr__(self, "unlabeled", UnlabeledRule.parse(self.unlabeled, "--unlabeled"))
        object.__setattr__(self, "correct_fallback", CorrectFallback.parse(self.correct_fallback, "--correct-fallback"))
        require_in_range("--noise-std", self.noise_std, 0)
        require_in_range("--gamma", self.gamma, 0)
        if self.expert_confidence is not None and not 0.5 <= self.expert_confidence < 1:
            raise ConfigError(f"--expert-confidence must be in [0.5, 1), not {self.expert_confidence}.")
