"""Random strategy inputs that contain the edge cases the strategies branch on, and the comparison helpers
shared by the strategy tests (tests/distillation/test_strategies.py, test_label_aware_strategies.py)."""

from __future__ import annotations

import numpy as np
import torch

from mtkd_cache.distillation.strategies import ExpertTensors, StrategyConfig, TeacherSignal, select

SHAPES = [(n, k) for n in (1, 2, 3, 5) for k in (2, 4, 7)]
B = 200


# ----------------------------------------------------------------------------------------------- caches

class Cache:
    def __init__(self, logits, preds, labels, table):
        self.logits, self.preds, self.labels, self.table = logits, preds, labels, table
        # Python-side copies for the references
        self.L = logits.tolist()
        self.P = preds.tolist()
        self.y = labels.tolist()
        self.E = table.experts.tolist()
        self.M = table.fallback
        self.acc = table.per_class_accuracy.tolist()


def make_cache(num_teachers: int, num_labels: int, seed: int, batch: int = B) -> Cache:
    rng = np.random.default_rng(seed)
    N, K = num_teachers, num_labels
    experts = rng.integers(N, size=K)
    if N >= 2:  # at least two distinct experts, so |S| > 1 and |S| = 0 can both happen
        experts[0], experts[1] = 0, 1
    fallback = int(rng.integers(N))
    # accuracies from a small set of values: many exact ties; class K-1 has accuracy 0 for every teacher
    accuracy = rng.choice([0.0, 0.25, 0.5, 0.5, 0.75, 1.0], size=(N, K))
    accuracy[:, K - 1] = 0.0
    preds = rng.integers(K, size=(batch, N))
    own = [[c for c in range(K) if experts[c] == n] for n in range(N)]
    other = [[c for c in range(K) if experts[c] != n] for n in range(N)]
    for b in range(0, 10):  # every teacher that is an expert of something predicts one of its classes
        for n in range(N):
            if own[n]:
                preds[b, n] = rng.choice(own[n])
    if N >= 2:
        for b in range(10, 20):  # nobody predicts a class it is the expert of: |S| = 0
            for n in range(N):
                preds[b, n] = rng.choice(other[n])
        for b in range(20, 30):  # exactly one claimant
            claimant = int(rng.choice([n for n in range(N) if own[n]]))
            for n in range(N):
                preds[b, n] = rng.choice(own[n]) if n == claimant else rng.choice(other[n])
    preds[30:40] = K - 1  # every teacher predicts a class on which all accuracies are 0
    logits = rng.normal(size=(batch, N, K)).astype(np.float32) * 2.0
    logits += 3.0 * np.eye(K, dtype=np.float32)[preds]  # argmax mostly agrees with the hard prediction
    if N >= 2:  # forced ties: teacher 1 is an exact copy of teacher 0 on some rows (equal CE, equal claims)
        logits[40:50, 1] = logits[40:50, 0]
        preds[40:50, 1] = preds[40:50, 0]
    labels = rng.integers(K, size=batch)
    labels[rng.random(batch) < 0.25] = -1
    labels[5] = labels[15] = labels[45] = -1
    table = ExpertTensors(experts=torch.from_numpy(experts).long(), fallback=fallback,
                          per_class_accuracy=torch.from_numpy(accuracy).float())
    return Cache(torch.from_numpy(logits), torch.from_numpy(preds).long(), torch.from_numpy(labels).long(), table)



def one_hot(index: int, size: int) -> list[float]:
    return [1.0 if n == index else 0.0 for n in range(size)]


def ref_expert(c: Cache, config: StrategyConfig):
    weights, fell_back = [], []
    N = len(c.L[0])
    for b in range(len(c.P)):
        claimants = [n for n in range(N) if c.E[c.P[b][n]] == n]
        chosen = claimants[0] if len(claimants) == 1 else c.M
        weights.append(one_hot(chosen, N))
        fell_back.append(len(claimants) != 1)
    return weights, fell_back


def run(name: str, c: Cache, seed: int = 0, **options) -> TeacherSignal:
    return select(StrategyConfig(name=name, **options), c.logits, c.preds, c.labels, c.table,
                  torch.Generator().manual_seed(seed))


def assert_weights(actual: torch.Tensor, expected: list[list[float]], atol: float = 1e-5) -> None:
    assert actual.dtype.is_floating_point
    np.testing.assert_allclose(actual.double().numpy(), np.array(expected, dtype=np.float64), rtol=1e-5, atol=atol)


