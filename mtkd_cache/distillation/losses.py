"""The distillation loss (Hinton et al., 2015, with the multi-teacher weighting of the strategies).

    loss_b = alpha * CE(s_b, y_b) + (1 - alpha) * T^2 * KD_b        (rows with a gold label)
    loss_b =                        (1 - alpha) * T^2 * KD_b        (rows without one: KD term only)
    KD_b   = KL(softmax(sum_n w_bn t_bn / T) || softmax(s_b / T))    Combine.LOGITS
    KD_b   = sum_n w_bn KL(softmax(t_bn / T) || softmax(s_b / T))    Combine.LOSSES
The T^2 factor keeps the KD gradients' scale independent of T. The batch loss is the mean over rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtkd_cache.distillation.strategies import Combine


def kl_to_student(teacher_logits: torch.Tensor, student_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || student) per row; teacher [..., K], student_log_probs [B, K] broadcastable."""
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor,
                      combine: Combine, labels: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """student_logits [B, K], teacher_logits [B, N, K], weights [B, N], labels [B] (-1 = none) -> scalar."""
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if combine is Combine.LOGITS:
        target = (weights[:, :, None] * teacher_logits.float()).sum(dim=1)
        kd = kl_to_student(target, student_log_probs, temperature)
    else:
        kd = (weights * kl_to_student(teacher_logits, student_log_probs[:, None, :], temperature)).sum(dim=1)
    labeled = labels >= 0
    ce = F.cross_entropy(student_logits.float(), labels.clamp(min=0), reduction="none")
    per_row = (1 - alpha) * temperature ** 2 * kd + torch.where(labeled, alpha * ce, torch.zeros_like(ce))
    return per_row.mean()


def supervised_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain fine-tuning: cross-entropy on labeled rows (warm-up epochs, `finetune`, the no-teacher floor)."""
    return F.cross_entropy(student_logits.float(), labels, ignore_index=-1)
