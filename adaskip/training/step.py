"""One self-distillation optimizer step: super-net forward/backward, base-net forward/backward, one step."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..models import SkipConfig, unwrap
from .loss import DistillConfig, LossTerms, base_terms, cross_entropy, super_terms


@dataclass(frozen=True)
class Precision:
    """Mixed precision: ``dtype`` None (fp32), ``"bf16"`` or ``"fp16"`` (fp16 needs a GradScaler)."""

    dtype: Optional[str] = None

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if self.dtype == "bf16" else torch.float16)

    def scaler(self, device: torch.device) -> Optional[torch.amp.GradScaler]:
        return torch.amp.GradScaler(device.type) if self.dtype == "fp16" else None


def _backward(loss: Tensor, scaler: Optional[torch.amp.GradScaler]) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler]) -> None:
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def _correct(logits: Tensor, targets: Tensor) -> int:
    labels = targets if targets.dim() == 1 else targets.argmax(1)
    return int((logits.argmax(1) == labels).sum())


def distill_step(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    optimizer: torch.optim.Optimizer,
    cfg: DistillConfig,
    precision: Precision = Precision(),
    scaler: Optional[torch.amp.GradScaler] = None,
) -> dict[str, float]:
    """One self-distillation step on a batch; ``model`` may be DDP-wrapped (built with
    ``find_unused_parameters=True``: the base pass leaves skippable blocks unused).

    Under DDP the first backward runs in ``no_sync()``, so gradients are all-reduced once per step,
    by the second backward, and include the super-net's locally accumulated gradients.
    """
    net = unwrap(model)
    super_cfg, base_cfg = SkipConfig.super_net(net.num_stages), SkipConfig.base_net(net.num_stages)
    want_feats = cfg.feature_weight > 0
    optimizer.zero_grad(set_to_none=True)
    no_sync = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()
    with no_sync:
        with precision.autocast(images.device):
            out = model(images, skip=super_cfg, return_features=want_feats)
        super_logits, super_feats = out if want_feats else (out, None)
        super_part = super_terms(super_logits, targets, cfg)
        _backward(super_part[1], scaler)
    with precision.autocast(images.device):
        out = model(images, skip=base_cfg, return_features=want_feats)
    base_logits, base_feats = out if want_feats else (out, None)
    base_part = base_terms(super_logits.detach(), base_logits, targets, cfg, super_feats, base_feats)
    _backward(base_part[3], scaler)
    _optimizer_step(optimizer, scaler)
    metrics = LossTerms.of(super_part, base_part).as_floats()
    metrics.update(super_correct=_correct(super_logits, targets), base_correct=_correct(base_logits, targets))
    return metrics


def plain_step(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    optimizer: torch.optim.Optimizer,
    precision: Precision = Precision(),
    scaler: Optional[torch.amp.GradScaler] = None,
    skip=None,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """One ordinary CE step (an individually trained baseline, or a plain timm model when ``skip`` is None
    and the model takes no skip argument). ``label_smoothing`` is train.label_smoothing, applied as in the
    super-net's CE of :func:`distill_step`: a baseline gets the same recipe as the adaptive-depth network."""
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast(images.device):
        logits = model(images) if skip is None else model(images, skip=skip)
    loss = cross_entropy(logits, targets, label_smoothing)
    _backward(loss, scaler)
    _optimizer_step(optimizer, scaler)
    return {"loss": float(loss.detach()), "correct": _correct(logits, targets)}


def kd_step(
    model: nn.Module,
    teacher: Callable[[Tensor], Tensor],
    images: Tensor,
    targets: Tensor,
    optimizer: torch.optim.Optimizer,
    cfg: DistillConfig,
    skip: str | SkipConfig,
    precision: Precision = Precision(),
    scaler: Optional[torch.amp.GradScaler] = None,
) -> dict[str, float]:
    """One step of sub-network ``skip`` trained alone with knowledge distillation from a separately trained
    ``teacher`` (a KD baseline): the objective the base-net gets from the super-net in self-distillation, its CE
    term with ``cfg.label_smoothing`` as there."""
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad(), precision.autocast(images.device):
        teacher_logits = teacher(images)
    with precision.autocast(images.device):
        logits = model(images, skip=skip)
    kd, _, _, objective = base_terms(teacher_logits.float(), logits, targets, cfg)
    _backward(objective, scaler)
    _optimizer_step(optimizer, scaler)
    return {"loss": float(objective.detach()), "kd": float(kd.detach()), "correct": _correct(logits, targets)}
