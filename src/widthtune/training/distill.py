"""Knowledge distillation: the student also matches the teacher's softened class distribution."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class DistillConfig:
    """Weight of the teacher term and the softening temperature (LW-DNA: alpha 0.4, T 4)."""

    alpha: float = 0.4
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"distill.alpha: {self.alpha!r} is not allowed; choose a number in [0, 1]")
        if not self.temperature > 0:
            raise ValueError(f"distill.temperature: {self.temperature!r} is not allowed; choose a number > 0")


def distillation_loss(
    student: Tensor, teacher: Tensor, targets: Tensor, config: DistillConfig, label_smoothing: float = 0.0
) -> Tensor:
    """(1 - alpha) CE(student, y) + alpha T^2 KL(softmax(teacher / T) || softmax(student / T))."""
    hard = F.cross_entropy(student, targets, label_smoothing=label_smoothing)
    t = config.temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - config.alpha) * hard + config.alpha * t * t * soft
