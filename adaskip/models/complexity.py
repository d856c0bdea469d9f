"""Multiply-accumulates and parameter counts per sub-network."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .adaptive import AdaptiveDepthNet
from .skip import SkipLike


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU one, so attention matmuls would
# be missed on CPU; count them with torch's own SDPA formula.
_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@torch.no_grad()
def count_macs(model: AdaptiveDepthNet, skip: SkipLike = None, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one image through sub-network ``skip`` (convolutions, matmuls, attention)."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(1, *input_size, dtype=param.dtype, device=param.device)
        with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
            model(x, skip=skip)
        return counter.get_total_flops() // 2
    finally:
        model.train(was_training)


def count_params(model: AdaptiveDepthNet, skip: SkipLike = None) -> int:
    """Parameters that sub-network ``skip`` uses: everything except the skipped stages' skippable
    blocks and, for each skip-aware norm, the set that does not run."""
    cfg = model.skip_config(skip)
    numel = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    total = sum(p.numel() for p in model.parameters())
    unused = 0
    for i, skipped in enumerate(cfg):
        norms = model.skip_aware_norms(i)
        unused += numel([n.full if skipped else n.skipped for n in norms])
        if skipped:
            unused += numel(model.skippable_blocks(i))
    return total - unused
