"""Self-distillation loss as pure functions (docs/method.md section 4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class DistillConfig:
    """Knobs of the loss. ``top_k=None`` distils over all classes.

    ``self_distillation=False`` is the ablation that trains the base-net with CE instead of KD;
    ``base_ce_weight`` adds CE on the base-net on top of KD.
    """

    alpha: float = 0.5
    temperature: float = 1.0
    top_k: Optional[int] = None
    feature_weight: float = 0.0
    base_ce_weight: float = 0.0
    label_smoothing: float = 0.0
    self_distillation: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (all classes), got {self.top_k}")
        if self.feature_weight < 0 or self.base_ce_weight < 0:
            raise ValueError("feature_weight and base_ce_weight must be >= 0")


@dataclass
class LossTerms:
    """The separate terms; ``super_objective`` is backpropagated first, ``base_objective`` second."""

    super_ce: Tensor
    kd: Tensor
    feat: Tensor
    base_ce: Tensor
    super_objective: Tensor
    base_objective: Tensor

    @property
    def total(self) -> Tensor:
        return self.super_objective + self.base_objective

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("super_ce", "kd", "feat", "base_ce", "total")}


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """CE for hard labels (class indices) or soft targets (mixup/cutmix probabilities)."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing if targets.dim() == 1 else 0.0)


def kd_loss(super_logits: Tensor, base_logits: Tensor, temperature: float = 1.0, top_k: Optional[int] = None) -> Tensor:
    """``T^2 * KL(softmax(super/T).detach() || log_softmax(base/T))`` over the super-net's top-K classes
    (all classes when ``top_k`` is None), averaged over the batch."""
    teacher, student = super_logits.detach().float(), base_logits.float()
    if top_k is not None and top_k < teacher.shape[1]:
        idx = teacher.topk(top_k, dim=1).indices
        teacher, student = teacher.gather(1, idx), student.gather(1, idx)
    log_p = F.log_softmax(teacher / temperature, dim=1)
    log_q = F.log_softmax(student / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def feature_loss(super_feats: Sequence[Tensor], base_feats: Sequence[Tensor]) -> Tensor:
    """Mean over stages of the MSE between base-net and (detached) super-net stage outputs."""
    losses = [F.mse_loss(b.float(), s.detach().float()) for s, b in zip(super_feats, base_feats)]
    return torch.stack(losses).mean()


def super_terms(super_logits: Tensor, targets: Tensor, cfg: DistillConfig) -> tuple[Tensor, Tensor]:
    """(CE of the super-net, the objective of the first backward: alpha * CE)."""
    ce = cross_entropy(super_logits, targets, cfg.label_smoothing)
    return ce, cfg.alpha * ce


def distillation_terms(super_logits: Tensor, base_logits: Tensor, targets: Tensor, cfg: DistillConfig,
                       super_feats: Optional[Sequence[Tensor]] = None,
                       base_feats: Optional[Sequence[Tensor]] = None) -> LossTerms:
    """All terms of the self-distillation loss for one batch."""
    super_ce, super_objective = super_terms(super_logits, targets, cfg)
    zero = super_logits.new_zeros((), dtype=torch.float32)
    base_ce = cross_entropy(base_logits, targets, cfg.label_smoothing)
    feat = feature_loss(super_feats, base_feats) if cfg.feature_weight and super_feats is not None else zero
    if cfg.self_distillation:
        kd = kd_loss(super_logits, base_logits, cfg.temperature, cfg.top_k)
        base_objective = (1 - cfg.alpha) * (kd + cfg.feature_weight * feat) + cfg.base_ce_weight * base_ce
    else:  # ablation: base-net trained by CE on labels, no teacher
        kd = zero
        base_objective = (1 - cfg.alpha) * base_ce
    return LossTerms(super_ce, kd, feat, base_ce, super_objective, base_objective)
