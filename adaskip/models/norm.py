"""Skip-aware normalization (docs/method.md section 3): a second norm set for mandatory blocks, used when their
stage is skipped."""

from __future__ import annotations

import copy

from torch import Tensor, nn

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


class SkipAwareNorm(nn.Module):
    """Holds the regular norm (``full``) and a copy (``skipped``); ``use_skip`` picks which runs.

    Only the set that runs sees the batch, so BatchNorm running statistics of each set change
    only in its own mode.
    """

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.full = norm
        self.skipped = copy.deepcopy(norm)
        self.use_skip = False

    def forward(self, x: Tensor) -> Tensor:
        return self.skipped(x) if self.use_skip else self.full(x)


def wrap_block_norms(block: nn.Module, exclude: tuple[str, ...] = ("downsample",)) -> list[SkipAwareNorm]:
    """Replace every norm inside ``block`` by a SkipAwareNorm, except under submodules named in ``exclude``
    (the downsample shortcut's norm is shared, as in the paper)."""
    wrapped = []
    for name, module in list(block.named_modules()):
        if not isinstance(module, NORM_TYPES) or any(part in exclude for part in name.split(".")):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = block.get_submodule(parent_name) if parent_name else block
        if isinstance(parent, SkipAwareNorm):
            continue
        sa = SkipAwareNorm(module)
        setattr(parent, attr, sa)
        wrapped.append(sa)
    return wrapped
