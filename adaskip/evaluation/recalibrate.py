"""Re-estimating BatchNorm statistics per sub-network before evaluating it (an ablation switch).

Intermediate sub-networks share the super-net's (or, with skip-aware norms, the base-net's) running
statistics although their activations differ. Re-estimating them on training batches, per configuration,
tests how much of an intermediate configuration's accuracy gap is a statistics mismatch.
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterable, Optional

import pandas as pd
import torch
from torch import nn

from ..models import AdaptiveDepthNet, SkipConfig
from ..models.skip import SkipLike
from ..models import unwrap
from .grid import evaluate_grid, select_configs


def recalibrate_bn(model: nn.Module, loader: Iterable, skip: SkipLike, batches: int = 10) -> AdaptiveDepthNet:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated (cumulative average over
    ``batches`` batches of ``loader``, no gradient) for sub-network ``skip``; ``model`` is unchanged."""
    net = copy.deepcopy(unwrap(model))
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    net.train()
    with torch.no_grad():
        for images, *_ in itertools.islice(loader, batches):
            net(images.to(next(net.parameters()).device), skip=skip)
    return net.eval()


def recalibrated_grid(
    model: nn.Module,
    loader: Iterable,
    calibration: Iterable,
    configs: Optional[Iterable[SkipLike]] = None,
    prefix: Optional[str] = None,
    batches: int = 10,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """:func:`evaluate_grid`, but every intermediate sub-network (neither super- nor base-net, which were
    trained with their own statistics) is evaluated after :func:`recalibrate_bn` on ``calibration``."""
    net = unwrap(model).to(device)
    selected = select_configs(net, configs, prefix)
    ends = {SkipConfig.super_net(net.num_stages), SkipConfig.base_net(net.num_stages)}
    parts = [evaluate_grid(net, loader, [c for c in selected if c in ends], device=device, progress=False)]
    parts += [
        evaluate_grid(recalibrate_bn(net, calibration, c, batches), loader, [c], device=device, progress=False)
        for c in selected
        if c not in ends
    ]
    order = {str(c): i for i, c in enumerate(selected)}
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values("skip", key=lambda s: s.map(order)).reset_index(drop=True)
