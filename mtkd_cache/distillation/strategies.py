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
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtkd_cache.distillation.strategy_config import STRATEGY_NAMES as STRATEGY_NAMES
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
    fell_back: torch.Tensor | None = None  # bool [B], `expert` only: the row followed M


def expert(logits, preds, labels, table: ExpertTensors, generator=None, config=None) -> TeacherSignal:
    """The thesis rule: S = {n : E[P[b,n]] == n}; follow the one teacher in S, or M when |S| is 0 or >1."""
    num_teachers = logits.shape[1]
    claims = table.experts[preds] == torch.arange(num_teachers, device=preds.device)  # [B, N]
    count = claims.sum(dim=1)
    chosen = torch.where(count == 1, claims.float().argmax(dim=1), torch.full_like(count, table.fallback))
    return TeacherSignal(F.one_hot(chosen, num_teachers).float(), Combine.LOGITS, logits, fell_back=count != 1)


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
}
STOCHASTIC = frozenset({Strategy.RANDOM, Strategy.NOISY})  # re-drawn every epoch from the seeded generator
NEEDS_EXPERTS = frozenset({Strategy.EXPERT, Strategy.BEST, Strategy.NOISY, Strategy.EXPERT_SOFT})


def select(config: StrategyConfig, logits: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor,
           table: ExpertTensors | None, generator: torch.Generator | None = None) -> TeacherSignal:
    return STRATEGIES[config.name](logits, preds, labels, table, generator, config)
