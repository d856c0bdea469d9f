"""Shared pieces: the ``Subsets`` tuple, a transforming subset and the stratified train/val carve."""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from .config import DataError

log = logging.getLogger(__name__)


class Subsets(NamedTuple):
    """Train/val/test datasets of one configuration plus what a model needs to know about them."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    class_names: list[str]


class TransformSubset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied to the image; ``targets`` lists the labels."""

    def __init__(
        self,
        base: Any,
        indices: Sequence[int],
        transform: Optional[Callable] = None,
        targets: Optional[Sequence[int]] = None,
    ) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.transform = transform
        all_targets = targets if targets is not None else base.targets
        self.targets = [int(all_targets[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, _ = self.base[self.indices[i]]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i]


def holdout_indices(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (keep, held_out) with ``fraction`` held out, stratified when possible."""
    idx = np.arange(len(labels))
    if len(idx) < 2:
        raise DataError(f"only {len(idx)} sample(s) to split: add images so that val can be carved out")
    try:
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=np.asarray(labels))
    except ValueError as e:  # too few samples per class for a stratified split
        log.warning("stratified split impossible (%s); splitting at random", e)
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)


def carve_val(train: Any, test: Any, val_fraction: float, seed: int, transform: Callable[[bool], Callable]) -> Subsets:
    """Subsets of a dataset that ships train and test sets (``targets`` and ``classes`` as torchvision's): train minus
    a stratified ``val_fraction`` carve, that carve as val (both from ``train``), and all of ``test``;
    ``transform(is_training)`` makes each split's transform."""
    keep, val = holdout_indices(train.targets, val_fraction, seed)
    return Subsets(
        train=TransformSubset(train, keep, transform(True)),
        val=TransformSubset(train, val, transform(False)),
        test=TransformSubset(test, range(len(test)), transform(False)),
        num_classes=len(train.classes),
        in_chans=3,
        class_names=list(train.classes),
    )
