"""How each supported timm family splits into stem, hierarchical stages of blocks, and head.

Each family only names timm's own modules and calls them in timm's own order; no timm code is copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


@dataclass
class StageBlocks:
    """One adaptive stage: an optional shared ``pre`` module (e.g. Swin patch merging) and its blocks."""

    pre: Optional[nn.Module]
    blocks: list[nn.Module]


@dataclass(frozen=True)
class Family:
    name: str
    patterns: tuple[str, ...]
    cls: type[nn.Module]
    stem: Callable[[nn.Module, Tensor], Tensor]
    stages: Callable[[nn.Module, int], list[StageBlocks]]
    head: Callable[[nn.Module, Tensor], Tensor]
    fixed_size: bool = False  # built for one input size: timm's img_size argument must match the data's


def _seq(modules: list[nn.Module]) -> Optional[nn.Module]:
    return nn.Sequential(*modules) if modules else None


# ResNet: stem conv1/bn1/act1/maxpool, stages layer1..layer4.
def _resnet_stem(m: ResNet, x: Tensor) -> Tensor:
    return m.maxpool(m.act1(m.bn1(m.conv1(x))))


def _resnet_stages(m: ResNet, _: int) -> list[StageBlocks]:
    return [StageBlocks(None, list(layer)) for layer in (m.layer1, m.layer2, m.layer3, m.layer4)]


# MobileNetV2 (timm EfficientNet builder): groups with >= 2 blocks are stages; single-block groups
# run before the next stage (or before the head when none follows).
def _adaptive_groups(m: EfficientNet) -> list[int]:
    return [i for i, group in enumerate(m.blocks) if len(group) >= 2]


def _mbv2_stem(m: EfficientNet, x: Tensor) -> Tensor:
    return m.bn1(m.conv_stem(x))


def _mbv2_stages(m: EfficientNet, _: int) -> list[StageBlocks]:
    stages, pending = [], []
    adaptive = set(_adaptive_groups(m))
    for i, group in enumerate(m.blocks):
        if i in adaptive:
            stages.append(StageBlocks(_seq(pending), list(group)))
            pending = []
        else:
            pending.append(group)
    return stages


def _mbv2_head(m: EfficientNet, x: Tensor) -> Tensor:
    for group in m.blocks[max(_adaptive_groups(m)) + 1 :]:
        x = group(x)
    return m.forward_head(m.bn2(m.conv_head(x)))


# ViT / DeiT: no hierarchy, so D blocks are grouped into stages of consecutive blocks.
def _vit_stem(m: VisionTransformer, x: Tensor) -> Tensor:
    return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


def _vit_stages(m: VisionTransformer, num_groups: int) -> list[StageBlocks]:
    blocks = list(m.blocks)
    if not 1 <= num_groups <= len(blocks) // 2:
        raise ValueError(
            f"num_stages={num_groups} impossible for {len(blocks)} blocks: need 2 blocks per stage at least"
        )
    return [StageBlocks(None, [blocks[i] for i in idx]) for idx in np.array_split(np.arange(len(blocks)), num_groups)]


def _vit_head(m: VisionTransformer, x: Tensor) -> Tensor:
    return m.forward_head(m.norm(x))


# Swin: stem patch_embed; each stage's patch merging (downsample) is a shared pre module.
def _swin_stages(m: SwinTransformer, _: int) -> list[StageBlocks]:
    return [StageBlocks(layer.downsample, list(layer.blocks)) for layer in m.layers]


def _swin_head(m: SwinTransformer, x: Tensor) -> Tensor:
    return m.forward_head(m.norm(x))


FAMILIES: tuple[Family, ...] = (
    Family(
        "resnet",
        ("resnet*", "resnext*", "wide_resnet*"),
        ResNet,
        _resnet_stem,
        _resnet_stages,
        lambda m, x: m.forward_head(x),
    ),
    Family("mobilenetv2", ("mobilenetv2_*",), EfficientNet, _mbv2_stem, _mbv2_stages, _mbv2_head),
    Family("vit", ("vit_*", "deit_*"), VisionTransformer, _vit_stem, _vit_stages, _vit_head, fixed_size=True),
    Family(
        "swin", ("swin_*",), SwinTransformer, lambda m, x: m.patch_embed(x), _swin_stages, _swin_head, fixed_size=True
    ),
)
