"""Hinton, Vinyals & Dean (2015) knowledge distillation.

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(y, z_s)

`alpha` weighs the soft (teacher) term and `1 - alpha` the hard-label term: alpha = 1 is pure distillation,
alpha = 0 ordinary supervised training. (Some code, torchdistill's among it, weighs the other way round.)
The KL term is averaged per sample ("batchmean") and scaled by T^2 so its gradients keep their size as T grows.
Samples without a label (label -1, the unlabelled transfer set) contribute to the soft term only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNLABELLED = -1


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    # A zero tied to the graph, so a batch with nothing to learn from still backpropagates.
    soft = student_logits.sum() * 0.0
    if alpha > 0:
        log_p_student = F.log_softmax(student_logits / temperature, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        soft = alpha * temperature**2 * kl
    if alpha >= 1:
        return soft
    labelled = labels != UNLABELLED
    if not labelled.any():
        return soft
    hard = F.cross_entropy(student_logits[labelled], labels[labelled])
    return soft + (1 - alpha) * hard
