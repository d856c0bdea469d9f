"""Diagnostics of the method's rationale (docs/method.md section 5, the paper's Figure 3): how much each residual
block changes its input.

Skipping a block replaces its output by its input, so the quantity that matters is ``||block(h) - h|| / ||h||``:
the paper argues that self-distillation makes skippable blocks *refine* (small ratio) while mandatory blocks
keep *learning new features* (large ratio). For pre-activation blocks (ViT, Swin) this is exactly
``||F(h)|| / ||h||``; for post-activation ResNet blocks it is the change the block makes after its ReLU.
Blocks that change the shape (a stage's downsampling block) have no identity path and are left out.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .adaptive import AdaptiveDepthNet
from .skip import SkipLike


def residual_ratios(model: AdaptiveDepthNet, x: Tensor, skip: SkipLike = None) -> dict[str, float]:
    """``{"s{stage}.{m|s}{index}": mean_over_batch(||block(h) - h|| / ||h||)}`` for every shape-preserving
    block run by sub-network ``skip`` (``m`` mandatory, ``s`` skippable; index within the stage)."""
    ratios: dict[str, float] = {}
    handles = []

    def hook(name: str):
        def record(_module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            h = inputs[0]
            if isinstance(output, Tensor) and output.shape == h.shape:
                num = (output - h).flatten(1).norm(dim=1)
                ratios[name] = float((num / h.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())

        return record

    for i in range(model.num_stages):
        for kind, blocks in (("m", model.mandatory_blocks(i)), ("s", model.skippable_blocks(i))):
            handles += [b.register_forward_hook(hook(f"s{i}.{kind}{j}")) for j, b in enumerate(blocks)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(x, skip=skip)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return ratios


def ratio_summary(ratios: dict[str, float], prefix: Optional[str] = "ratio_") -> dict[str, float]:
    """Mean ratio over mandatory and over skippable blocks (NaN-free: a kind with no block is left out)."""
    out = {}
    for kind, label in (("m", "mandatory"), ("s", "skippable")):
        values = [v for k, v in ratios.items() if k.split(".")[1].startswith(kind)]
        if values:
            out[f"{prefix}{label}"] = sum(values) / len(values)
    return out
