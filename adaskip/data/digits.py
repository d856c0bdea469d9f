"""The embedded default: scikit-learn's 1797 8x8 handwritten digits, held in memory as tensors."""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .base import Subsets, holdout_indices
from .config import DataConfig

log = logging.getLogger(__name__)

_MAX_VALUE = 16.0  # digits pixels are integers in [0, 16]


class TensorImageDataset(Dataset):
    """Single-channel images ``(N, 1, S, S)`` served as ``(3, S, S)``, with an optional tensor transform."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        transform: Optional[Callable[[Tensor], Tensor]] = None,
        in_chans: int = 3,
        source_index: Optional[Tensor] = None,
    ) -> None:
        self.images = images
        self.source_index = source_index  # rows of the original array, for provenance
        self.labels = labels
        self.targets = labels.tolist()
        self.transform = transform
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image.expand(self.in_chans, -1, -1), self.targets[i]


def _raw() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def fingerprint(cfg: Optional[DataConfig] = None) -> str:
    """sha256 of the digits pixel and label arrays."""
    images, labels = _raw()
    h = hashlib.sha256()
    for a in (images, labels):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _upscale(images: np.ndarray, size: int) -> Tensor:
    x = torch.from_numpy(images).unsqueeze(1) / _MAX_VALUE  # (N, 1, 8, 8) in [0, 1]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous()


def _augmentation(fill: float) -> Callable[[Tensor], Tensor]:
    # No flips: a mirrored digit is another (or no) digit.
    return v2.RandomAffine(
        degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), interpolation=v2.InterpolationMode.BILINEAR, fill=fill
    )


def partition_digits(cfg: DataConfig) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Stratified train/val/test indices of the digits for ``cfg.seed``, plus images and labels."""
    images, labels = _raw()
    rest, test = holdout_indices(labels, cfg.test_fraction, cfg.seed)
    val_share = cfg.val_fraction / (1.0 - cfg.test_fraction)
    keep, val = holdout_indices(labels[rest], val_share, cfg.seed)
    return {"train": rest[keep], "val": rest[val], "test": test}, images, labels


def load(cfg: DataConfig) -> Subsets:
    """Digits upscaled to ``cfg.image_size``, normalised with the train split's mean and std."""
    index, images, labels = partition_digits(cfg)
    x = _upscale(images, cfg.image_size)
    y = torch.from_numpy(labels)
    train_x = x[index["train"]]
    mean, std = train_x.mean().item(), train_x.std().item()
    x = (x - mean) / std
    aug = _augmentation(fill=-mean / std) if cfg.augment else None
    log.debug("digits: %s", {k: len(v) for k, v in index.items()})

    def part(name: str, transform: Optional[Callable[[Tensor], Tensor]] = None) -> TensorImageDataset:
        rows = torch.from_numpy(index[name])
        return TensorImageDataset(x[rows], y[rows], transform, source_index=rows)

    return Subsets(
        train=part("train", aug),
        val=part("val"),
        test=part("test"),
        num_classes=10,
        in_chans=3,
        class_names=[str(d) for d in range(10)],
    )
