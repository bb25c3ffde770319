"""Teacher selection strategies: cached teacher outputs -> per-sample teacher weights.

Every strategy is a vectorized function of cached tensors (no Python loop over samples):
    logits  [B, N, K]  teacher logits (classes in the cache's label order)
    preds   [B, N]     teacher hard predictions
    labels  [B]        gold labels, -1 where a row has none
and returns a `TeacherSignal`: weights [B, N] plus how they combine in the loss (see losses.py):
    Combine.LOGITS  the KD target is softmax(sum_n w_n * t_n / T)        (one teacher, or an average)
    Combine.LOSSES  the KD term is sum_n w_n * KL(softmax(t_n / T) || q)  (weighted multi-teacher KD)
With one-hot weights the two are the same. Strategies that draw random numbers (`random`, `noisy`) take a
seeded generator and are re-drawn every epoch; the others are computed once per split.

Two options change what every strategy sees (both computed on the expert split, see experts.py):
`expert_confidence` replaces a class's expert by M unless it is better than M with that posterior
probability, and `calibrate` divides each teacher's logits by its fitted temperature T_n.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtkd_cache.distillation.strategy_config import STRATEGY_NAMES as STRATEGY_NAMES
from mtkd_cache.distillation.strategy_config import CorrectFallback, UnlabeledRule
from mtkd_cache.distillation.strategy_config import Strategy as Strategy
from mtkd_cache.distillation.strategy_config import StrategyConfig as StrategyConfig


class Combine(enum.Enum):
    LOGITS = "logits"
    LOSSES = "losses"


@dataclass
class ExpertTensors:
    """The expert table as tensors over the selected teacher subset."""

    experts: torch.Tensor  # long [K], index into the subset of the expert of each class
    fallback: int  # index into the subset of M
    per_class_accuracy: torch.Tensor  # float [N, K]; NaN (absent class) already replaced by 0


@dataclass
class TeacherSignal:
    weights: torch.Tensor  # float [B, N]
    combine: Combine
    logits: torch.Tensor  # float [B, N, K]: the teacher logits to distil from (noisy adds its noise here)
    fell_back: torch.Tensor | None = None  # bool [B], `expert`/`expert-gold`: the row followed M by the rule


def _claims(preds: torch.Tensor, table: ExpertTensors) -> torch.Tensor:
    """bool [B, N]: teacher n predicts a class it is the expert of."""
    return table.experts[preds] == torch.arange(preds.shape[1], device=preds.device)


def expert(logits, preds, labels, table: ExpertTensors, generator=None, config=None) -> TeacherSignal:
    """The thesis rule: S = {n : E[P[b,n]] == n}; follow the one teacher in S, or M when |S| is 0 or >1."""
    num_teachers = logits.shape[1]
    claims = _claims(preds, table)
    count = claims.sum(dim=1)
    chosen = torch.where(count == 1, claims.float().argmax(dim=1), torch.full_like(count, table.fallback))
    return TeacherSignal(F.one_hot(chosen, num_teachers).float(), Combine.LOGITS, logits, fell_back=count != 1)


def _most_accurate_claim(preds: torch.Tensor, table: ExpertTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """Among the claiming teachers, the one most accurate on the class it claims (ties: the first in the
    subset's order); M where no teacher claims. Returns (chosen [B], fell back [B])."""
    num_teachers = preds.shape[1]
    claims = _claims(preds, table)
    trust = table.per_class_accuracy[torch.arange(num_teachers, device=preds.device), preds]  # [B, N]
    trust = torch.where(claims, trust, torch.full_like(trust, -1.0))
    nobody = ~claims.any(dim=1)
    chosen = torch.where(nobody, torch.full_like(nobody, table.fallback, dtype=torch.long), trust.argmax(dim=1))
    return chosen, nobody


def expert_gold(logits, preds, labels, table: ExpertTensors, generator=None, config=None) -> TeacherSignal:
    """On a row labeled y, follow the expert of class y (the teacher most accurate on y), whatever the
    teachers predict; rows without a label follow `config.unlabeled` (the thesis rule by default)."""
    num_teachers = preds.shape[1]
    rule = (config or StrategyConfig()).unlabeled
    if rule is UnlabeledRule.THESIS:
        unlabeled_signal = expert(logits, preds, labels, table)
        unlabeled_choice, unlabeled_fell_back = unlabeled_signal.weights.argmax(dim=1), unlabeled_signal.fell_back
    else:
        unlabeled_choice, unlabeled_fell_back = _most_accurate_claim(preds, table)
    labeled = labels >= 0
    chosen = torch.where(labeled, table.experts[labels.clamp(min=0)], unlabeled_choice)
    fell_back = unlabeled_fell_back & ~labeled
    return TeacherSignal(F.one_hot(chosen, num_teachers).float(), Combine.LOGITS, logits, fell_back=fell_back)


def correct(logits, preds, labels, table: ExpertTensors, generator=None, config=None) -> TeacherSignal:
    """On a row labeled y, the teachers that predict y, weighted by their accuracy on class y (equal weights
    when those accuracies are all 0); when none is right, `config.correct_fallback`: M, or no KD term (the
    gold label alone). Rows without a label follow M."""
    batch, num_teachers = preds.shape
    fallback = (config or StrategyConfig()).correct_fallback
    labeled = labels >= 0
    gold = labels.clamp(min=0)
    right = (preds == gold[:, None]) & labeled[:, None]  # [B, N]
    accuracy_on_gold = table.per_class_accuracy[:, gold].T  # [B, N]
    trust = torch.where(right, accuracy_on_gold, torch.zeros_like(accuracy_on_gold))
    trust = torch.where((trust.sum(dim=1, keepdim=True) > 0) | ~right, trust, right.float())  # all right ones at 0
    total = trust.sum(dim=1, keepdim=True)
    follow_m = F.one_hot(torch.full((batch,), table.fallback, dtype=torch.long, device=preds.device), num_teachers).float()
    nobody_right = total.squeeze(1) == 0
    otherwise = torch.zeros_like(follow_m) if fallback is CorrectFallback.GOLD else follow_m
    weights = torch.where(nobody_right[:, None], torch.where(labeled[:, None], otherwise, follow_m),
                          trust / total.clamp(min=1e-12))
    return TeacherSignal(weights, Combine.LOSSES, logits)


def no_teacher(logits, preds, labels, table=None, generator=None, config=None) -> TeacherSignal:
    """The floor every strategy is compared against: zero weights, so the KD term is 0 (and alpha is 1)."""
    return TeacherSignal(torch.zeros(preds.shape, device=logits.device), Combine.LOSSES, logits)


def average(logits, preds, labels, table=None, generator=None, config=None) -> TeacherSignal:
    """Mean of the teachers' logits with equal weights; the loss softens it by T."""
    batch, num_teachers = preds.shape
    return TeacherSignal(torch.full((batch, num_teachers), 1.0 / num_teachers, device=logits.device), Combine.LOGITS, logits)


def random_teacher(logits, preds, labels, table=None, generator=None, config=None) -> TeacherSignal:
    """A uniformly random teacher per sample, from the seeded generator (re-drawn each epoch)."""
    batch, num_teachers = preds.shape
    chosen = torch.randint(num_teachers, (batch,), generator=generator, device="cpu").to(logits.device)
    return TeacherSignal(F.one_hot(chosen, num_teachers).float(), Combine.LOGITS, logits)


def best(logits, preds, labels, table: ExpertTensors, generator=None, config=None) -> TeacherSignal:
    """Single-teacher distillation from M, the baseline every multi-teacher method is held against."""
    batch, num_teachers = preds.shape
    chosen = torch.full((batch,), table.fallback, dtype=torch.long, device=logits.device)
    return TeacherSignal(F.one_hot(chosen, num_teachers).float(), Combine.LOGITS, logits)


def _teacher_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE_n of every teacher against the gold label, [B, N]; rows without a label get 0."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    gathered = log_probs.gather(2, labels.clamp(min=0)[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(2)
    return torch.where((labels >= 0)[:, None], -gathered, torch.zeros_like(gathered))


def camkd(logits, preds, labels, table=None, generator=None, config=None) -> TeacherSignal:
    """CA-MKD (Zhang et al., 2022): w_n = (1 - softmax_n(CE_n)) / (N - 1); unlabeled rows: equal weights."""
    batch, num_teachers = preds.shape
    if num_teachers == 1:
        return TeacherSignal(torch.ones(batch, 1, device=logits.device), Combine.LOSSES, logits)
    weights = (1 - torch.softmax(_teacher_cross_entropy(logits, labels), dim=1)) / (num_teachers - 1)
    weights = torch.where((labels >= 0)[:, None], weights, torch.full_like(weights, 1.0 / num_teachers))
    return TeacherSignal(weights, Combine.LOSSES, logits)


def mtbert(logits, preds, labels, table=None, generator=None, config=None) -> TeacherSignal:
    """MT-BERT (Wu et al., 2021): each teacher's KD term weighted by 1 / (1 + CE_n); unlabeled rows: 1/N."""
    num_teachers = preds.shape[1]
    weights = 1.0 / (1.0 + _teacher_cross_entropy(logits, labels))
    weights = torch.where((labels >= 0)[:, None], weights, torch.full_like(weights, 1.0 / num_teachers))
    return TeacherSignal(weights, Combine.LOSSES, logits)


def noisy(logits, preds, labels, table: ExpertTensors, generator=None, config=None) -> TeacherSignal:
    """Sau & Balasubramanian (2016): Gaussian noise N(0, sigma^2) on the logits of M, re-drawn each epoch,
    simulating several teachers from the best one."""
    sigma = (config or StrategyConfig()).noise_std
    noise = torch.randn(logits.shape, generator=generator, device="cpu").to(logits.device) * sigma
    signal = best(logits, preds, labels, table)
    return TeacherSignal(signal.weights, Combine.LOGITS, logits.float() + noise)


def expert_soft(logits, preds, labels, table: ExpertTensors, generator=None, config=None) -> TeacherSignal:
    """Beyond the thesis (its future work): w_n ∝ acc[n, P[b,n]]^gamma, the teacher's accuracy on the class
    it predicts for this sample, normalized per sample; a uniform mixture where every such accuracy is 0."""
    gamma = (config or StrategyConfig()).gamma
    num_teachers = preds.shape[1]
    trust = table.per_class_accuracy[torch.arange(num_teachers, device=preds.device), preds] ** gamma  # [B, N]
    total = trust.sum(dim=1, keepdim=True)
    weights = torch.where(total > 0, trust / total.clamp(min=1e-12), torch.full_like(trust, 1.0 / num_teachers))
    return TeacherSignal(weights, Combine.LOSSES, logits)


STRATEGIES = {
    Strategy.EXPERT: expert, Strategy.AVERAGE: average, Strategy.RANDOM: random_teacher, Strategy.BEST: best,
    Strategy.CAMKD: camkd, Strategy.MTBERT: mtbert, Strategy.NOISY: noisy, Strategy.EXPERT_SOFT: expert_soft,
    Strategy.EXPERT_GOLD: expert_gold, Strategy.CORRECT: correct, Strategy.NONE: no_teacher,
}
STOCHASTIC = frozenset({Strategy.RANDOM, Strategy.NOISY})  # re-drawn every epoch from the seeded generator
NEEDS_EXPERTS = frozenset({Strategy.EXPERT, Strategy.BEST, Strategy.NOISY, Strategy.EXPERT_SOFT, Strategy.EXPERT_GOLD,
                           Strategy.CORRECT})


def who_taught(strategy: Strategy, signal: TeacherSignal, teachers: tuple[str, ...]
               ) -> tuple[dict[str, int] | None, dict[str, float]]:
    """Rows that followed each teacher (one-hot strategies only; None otherwise, where the argmax of a
    mixture says nothing) and each teacher's mean weight over the rows (every strategy)."""
    mean_weight = {t: float(signal.weights[:, n].mean()) if len(signal.weights) else 0.0 for n, t in enumerate(teachers)}
    if not strategy.one_hot:
        return None, mean_weight
    chosen = signal.weights.argmax(dim=1)
    return {t: int((chosen == n).sum()) for n, t in enumerate(teachers)}, mean_weight


def select(config: StrategyConfig, logits: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor,
           table: ExpertTensors | None, generator: torch.Generator | None = None) -> TeacherSignal:
    return STRATEGIES[config.name](logits, preds, labels, table, generator, config)
