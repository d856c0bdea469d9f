"""Self-distillation loss as pure functions (docs/method.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import DistillConfig  # the knobs: one definition with params.yaml's train section


@dataclass
class LossTerms:
    """The separate terms of one step, each computed once: ``super_objective`` (:func:`super_terms`) is what the
    first backward propagates, ``base_objective`` (:func:`base_terms`) the second."""

    super_ce: Tensor
    kd: Tensor
    feat: Tensor
    base_ce: Tensor
    super_objective: Tensor
    base_objective: Tensor

    @classmethod
    def of(cls, super_part: tuple[Tensor, Tensor], base_part: tuple[Tensor, Tensor, Tensor, Tensor]) -> "LossTerms":
        """From :func:`super_terms` and :func:`base_terms`."""
        (super_ce, super_objective), (kd, feat, base_ce, base_objective) = super_part, base_part
        return cls(super_ce, kd, feat, base_ce, super_objective, base_objective)

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
    return temperature**2 * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def feature_loss(super_feats: Sequence[Tensor], base_feats: Sequence[Tensor]) -> Tensor:
    """Mean over stages of the MSE between base-net and (detached) super-net stage outputs."""
    losses = [F.mse_loss(b.float(), s.detach().float()) for s, b in zip(super_feats, base_feats)]
    return torch.stack(losses).mean()


def super_terms(super_logits: Tensor, targets: Tensor, cfg: DistillConfig) -> tuple[Tensor, Tensor]:
    """(CE of the super-net, the objective of the first backward: alpha * CE)."""
    ce = cross_entropy(super_logits, targets, cfg.label_smoothing)
    return ce, cfg.alpha * ce


def base_terms(
    super_logits: Tensor,
    base_logits: Tensor,
    targets: Tensor,
    cfg: DistillConfig,
    super_feats: Optional[Sequence[Tensor]] = None,
    base_feats: Optional[Sequence[Tensor]] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(KD, feature loss, CE of the base-net, the objective of the second backward) for one batch."""
    zero = super_logits.new_zeros((), dtype=torch.float32)
    base_ce = cross_entropy(base_logits, targets, cfg.label_smoothing)
    feat = feature_loss(super_feats, base_feats) if cfg.feature_weight and super_feats is not None else zero
    if not cfg.self_distillation:  # ablation: base-net trained by CE on labels, no teacher
        return zero, feat, base_ce, (1 - cfg.alpha) * base_ce
    kd = kd_loss(super_logits, base_logits, cfg.temperature, cfg.top_k)
    return kd, feat, base_ce, (1 - cfg.alpha) * (kd + cfg.feature_weight * feat) + cfg.base_ce_weight * base_ce


def distillation_terms(
    super_logits: Tensor,
    base_logits: Tensor,
    targets: Tensor,
    cfg: DistillConfig,
    super_feats: Optional[Sequence[Tensor]] = None,
    base_feats: Optional[Sequence[Tensor]] = None,
) -> LossTerms:
    """All terms of the self-distillation loss for one batch (what :func:`distill_step` computes in two halves)."""
    return LossTerms.of(
        super_terms(super_logits, targets, cfg),
        base_terms(super_logits, base_logits, targets, cfg, super_feats, base_feats),
    )
