"""The distillation loss against golden values computed here with explicit exp/log sums (not torch's KL).

    loss_b = alpha * CE(s_b, y_b) + (1 - alpha) * T^2 * KD_b   (labeled rows; unlabeled: the KD term only)
    KD_b   = KL(softmax(sum_n w_bn t_bn / T) || softmax(s_b / T))        Combine.LOGITS
    KD_b   = sum_n w_bn KL(softmax(t_bn / T) || softmax(s_b / T))        Combine.LOSSES
    batch loss = mean over rows
"""

from __future__ import annotations

import math

import pytest
import torch

from mtkd_cache.distillation.losses import distillation_loss, supervised_loss
from mtkd_cache.distillation.strategies import Combine

STUDENT = [[1.0, 0.5, -0.5], [0.2, -1.0, 0.3]]
TEACHERS = [[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]],
            [[-0.5, 0.3, 1.2], [1.0, 1.0, -1.0]]]
WEIGHTS = [[0.7, 0.3], [0.25, 0.75]]
LABELS = [2, -1]


# --------------------------------------------------------------------------- reference, by hand

def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))


def cross_entropy(row: list[float], label: int) -> float:
    return -math.log(softmax(row)[label])


def kd_term(b: int, combine: Combine, temperature: float, student=STUDENT, teachers=TEACHERS, weights=WEIGHTS) -> float:
    q = softmax(student[b], temperature)
    N, K = len(teachers[b]), len(student[b])
    if combine is Combine.LOGITS:
        target = [sum(weights[b][n] * teachers[b][n][k] for n in range(N)) for k in range(K)]
        return kl(softmax(target, temperature), q)
    return sum(weights[b][n] * kl(softmax(teachers[b][n], temperature), q) for n in range(N))


def reference_loss(combine: Combine, alpha: float, temperature: float, student=STUDENT, teachers=TEACHERS,
                   weights=WEIGHTS, labels=LABELS) -> float:
    rows = []
    for b in range(len(student)):
        value = (1 - alpha) * temperature ** 2 * kd_term(b, combine, temperature, student, teachers, weights)
        if labels[b] >= 0:
            value += alpha * cross_entropy(student[b], labels[b])
        rows.append(value)
    return sum(rows) / len(rows)


def loss(combine: Combine, alpha: float, temperature: float, student=STUDENT, teachers=TEACHERS, weights=WEIGHTS,
         labels=LABELS) -> torch.Tensor:
    return distillation_loss(torch.tensor(student), torch.tensor(teachers), torch.tensor(weights), combine,
                             torch.tensor(labels), alpha, temperature)


# ------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("combine", [Combine.LOGITS, Combine.LOSSES])
@pytest.mark.parametrize("alpha,temperature", [(0.3, 2.0), (0.5, 1.0), (0.0, 3.0), (0.9, 0.5)])
def test_golden_values(combine, alpha, temperature):
    value = loss(combine, alpha, temperature)
    assert value.shape == ()
    assert value.item() == pytest.approx(reference_loss(combine, alpha, temperature), rel=1e-5, abs=1e-7)


def test_golden_value_written_out():
    """One case spelled out completely, so a reader can check the reference itself."""
    T, alpha = 2.0, 0.3
    # row 0, LOGITS: target = 0.7 * [2, 0, -1] + 0.3 * [0.5, 1.5, 0] = [1.55, 0.45, -0.7]
    p0 = softmax([1.55, 0.45, -0.7], T)
    q0 = softmax([1.0, 0.5, -0.5], T)
    kd0 = sum(p * math.log(p / q) for p, q in zip(p0, q0))
    z = math.exp(1.0) + math.exp(0.5) + math.exp(-0.5)
    ce0 = -(-0.5 - math.log(z))  # label 2
    # row 1 (unlabeled): target = 0.25 * [-0.5, 0.3, 1.2] + 0.75 * [1, 1, -1] = [0.625, 0.825, -0.45]
    p1 = softmax([0.625, 0.825, -0.45], T)
    q1 = softmax([0.2, -1.0, 0.3], T)
    kd1 = sum(p * math.log(p / q) for p, q in zip(p1, q1))
    expected = ((1 - alpha) * T * T * kd0 + alpha * ce0 + (1 - alpha) * T * T * kd1) / 2
    assert loss(Combine.LOGITS, alpha, T).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("combine", [Combine.LOGITS, Combine.LOSSES])
def test_temperature_squared_factor(combine):
    """alpha = 0: loss(T) = T^2 * mean KD(T), so loss(2) / loss(1) = 4 * KD(2) / KD(1)."""
    kd = {T: sum(kd_term(b, combine, T) for b in range(2)) / 2 for T in (1.0, 2.0, 4.0)}
    loss_1, loss_2, loss_4 = (loss(combine, 0.0, T).item() for T in (1.0, 2.0, 4.0))
    assert loss_1 == pytest.approx(kd[1.0], rel=1e-5)
    assert loss_2 / loss_1 == pytest.approx(4 * kd[2.0] / kd[1.0], rel=1e-5)
    assert loss_4 / loss_1 == pytest.approx(16 * kd[4.0] / kd[1.0], rel=1e-5)
    assert loss_2 == pytest.approx(4 * kd[2.0], rel=1e-5)


@pytest.mark.parametrize("combine", [Combine.LOGITS, Combine.LOSSES])
def test_alpha_one_is_plain_cross_entropy_on_labeled_rows(combine):
    ce0 = cross_entropy(STUDENT[0], 2)
    assert loss(combine, 1.0, 2.0).item() == pytest.approx(ce0 / 2, rel=1e-5)  # row 1 unlabeled: contributes 0
    only_labeled = loss(combine, 1.0, 2.0, STUDENT[:1], TEACHERS[:1], WEIGHTS[:1], [2])
    assert only_labeled.item() == pytest.approx(ce0, rel=1e-5)
    only_unlabeled = loss(combine, 1.0, 2.0, STUDENT[1:], TEACHERS[1:], WEIGHTS[1:], [-1])
    assert only_unlabeled.item() == 0.0
    both_labeled = loss(combine, 1.0, 3.0, labels=[2, 0])
    expected = (ce0 + cross_entropy(STUDENT[1], 0)) / 2
    assert both_labeled.item() == pytest.approx(expected, rel=1e-5)
    assert both_labeled.item() == pytest.approx(
        torch.nn.functional.cross_entropy(torch.tensor(STUDENT), torch.tensor([2, 0])).item(), rel=1e-6)


@pytest.mark.parametrize("combine", [Combine.LOGITS, Combine.LOSSES])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_unlabeled_rows_get_only_the_kd_term(combine, alpha):
    T = 2.0
    value = loss(combine, alpha, T, STUDENT[1:], TEACHERS[1:], WEIGHTS[1:], [-1])
    assert value.item() == pytest.approx((1 - alpha) * T * T * kd_term(1, combine, T), rel=1e-5, abs=1e-9)
    # whatever the label placeholder hides, an unlabeled row never sees a CE term
    for label in range(3):
        labeled = loss(combine, alpha, T, STUDENT[1:], TEACHERS[1:], WEIGHTS[1:], [label]).item()
        assert labeled == pytest.approx(value.item() + alpha * cross_entropy(STUDENT[1], label), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("alpha,temperature", [(0.0, 1.0), (0.3, 2.0), (0.7, 4.0)])
def test_one_hot_weights_same_in_logits_and_losses_modes(alpha, temperature):
    g = torch.Generator().manual_seed(0)
    B, N, K = 64, 4, 5
    student = torch.randn(B, K, generator=g) * 2
    teachers = torch.randn(B, N, K, generator=g) * 3
    weights = torch.nn.functional.one_hot(torch.randint(N, (B,), generator=g), N).float()
    labels = torch.randint(-1, K, (B,), generator=g)
    by_logits = distillation_loss(student, teachers, weights, Combine.LOGITS, labels, alpha, temperature)
    by_losses = distillation_loss(student, teachers, weights, Combine.LOSSES, labels, alpha, temperature)
    assert by_logits.item() == pytest.approx(by_losses.item(), rel=1e-5)


def test_logits_and_losses_modes_differ_for_a_real_mixture():
    """Sanity check that the golden tests really distinguish the two modes."""
    assert reference_loss(Combine.LOGITS, 0.0, 2.0) != pytest.approx(reference_loss(Combine.LOSSES, 0.0, 2.0), rel=1e-3)


@pytest.mark.parametrize("combine", [Combine.LOGITS, Combine.LOSSES])
def test_gradients_flow_to_the_student_only(combine):
    alpha, T = 0.3, 2.0
    student = torch.tensor(STUDENT, requires_grad=True)
    teachers, weights = torch.tensor(TEACHERS), torch.tensor(WEIGHTS)
    distillation_loss(student, teachers, weights, combine, torch.tensor(LABELS), alpha, T).backward()
    assert teachers.grad is None and weights.grad is None and not teachers.requires_grad
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # analytic gradient: d/ds [T^2 KL(p || softmax(s/T))] = T (q - p);  d/ds CE = softmax(s) - onehot(y)
    B = len(STUDENT)
    for b in range(B):
        q = softmax(STUDENT[b], T)
        if combine is Combine.LOGITS:
            target = [sum(WEIGHTS[b][n] * TEACHERS[b][n][k] for n in range(2)) for k in range(3)]
            kd_grad = [T * (qk - pk) for qk, pk in zip(q, softmax(target, T))]
        else:
            kd_grad = [T * sum(WEIGHTS[b][n] * (q[k] - softmax(TEACHERS[b][n], T)[k]) for n in range(2))
                       for k in range(3)]
        expected = [(1 - alpha) * g for g in kd_grad]
        if LABELS[b] >= 0:
            s = softmax(STUDENT[b])
            expected = [e + alpha * (s[k] - (k == LABELS[b])) for k, e in enumerate(expected)]
        expected = [e / B for e in expected]
        assert student.grad[b].tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_half_precision_teacher_logits_are_accepted():
    """Caches store float16 logits; the loss computes in float32 and matches the float32 result."""
    student = torch.tensor(STUDENT)
    teachers = torch.tensor(TEACHERS)
    for combine in (Combine.LOGITS, Combine.LOSSES):
        full = distillation_loss(student, teachers, torch.tensor(WEIGHTS), combine, torch.tensor(LABELS), 0.3, 2.0)
        half = distillation_loss(student, teachers.half(), torch.tensor(WEIGHTS), combine, torch.tensor(LABELS), 0.3, 2.0)
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(full.item(), rel=1e-3)


def test_supervised_loss_ignores_unlabeled_rows():
    student = torch.tensor([[1.0, 0.5, -0.5], [0.2, -1.0, 0.3], [3.0, -2.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([2, -1, 0, -1])
    expected = (cross_entropy(student[0].tolist(), 2) + cross_entropy(student[2].tolist(), 0)) / 2
    assert supervised_loss(student, labels).item() == pytest.approx(expected, rel=1e-6)
    # changing the logits of unlabeled rows changes nothing
    other = student.clone()
    other[[1, 3]] = torch.tensor([[9.0, -9.0, 0.0], [-5.0, 5.0, 1.0]])
    assert supervised_loss(other, labels).item() == pytest.approx(expected, rel=1e-6)


def test_supervised_loss_gradient_is_zero_on_unlabeled_rows():
    student = torch.tensor([[1.0, 0.5, -0.5], [0.2, -1.0, 0.3]], requires_grad=True)
    supervised_loss(student, torch.tensor([1, -1])).backward()
    assert torch.equal(student.grad[1], torch.zeros(3))
    assert student.grad[0].abs().sum() > 0
