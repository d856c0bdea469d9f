"""Image transforms for PIL datasets: timm's for model-sized inputs, light torchvision ones for small images."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision.transforms import v2

# Below this size timm's ImageNet recipe (random-resized crops down to 8% area, 0.875 centre crop) destroys
# the little an image holds, so small inputs get a CIFAR-style recipe instead.
TIMM_MIN_SIZE = 96


def build_transform(
    image_size: int, is_training: bool, augment: bool = True, native_size: Optional[int] = None
) -> Callable:
    """PIL image -> normalised float tensor ``(3, image_size, image_size)``.

    ``native_size`` is the fixed size of every source image (32 for CIFAR) or None for photos of any size.
    """
    train = is_training and augment
    if image_size >= TIMM_MIN_SIZE:
        crop_pct = 1.0 if native_size is not None else None  # never crop away a tiny image's border
        return create_transform(
            input_size=image_size,
            is_training=train,
            crop_pct=crop_pct,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
        )
    return v2.Compose(
        [
            v2.ToImage(),
            *_small_geometry(image_size, train, native_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD)),
        ]
    )


def _small_geometry(size: int, train: bool, native_size: Optional[int]) -> list[Callable]:
    if native_size is not None:  # fixed-size images: resize, then pad-and-crop jitter
        ops: list[Callable] = [] if native_size == size else [v2.Resize((size, size), antialias=True)]
        if train:
            ops += [v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"), v2.RandomHorizontalFlip()]
        return ops
    if train:
        return [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    return [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
