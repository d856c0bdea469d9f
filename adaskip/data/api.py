"""Entry points: ``load_subsets`` for training code and ``prepare`` for the pipeline's data stage."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..files import write_json
from .base import Subsets
from .config import DataConfig, DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"

_MODULES = {"digits": "digits", "cifar10": "cifar", "cifar100": "cifar", "imagefolder": "imagefolder"}


def _source(name: str):
    """The module of one dataset kind, imported on use (digits never pays for timm's transforms)."""
    return importlib.import_module(f".{_MODULES[name]}", __package__)


def load_subsets(cfg: DataConfig) -> Subsets:
    """Train, val and test datasets for ``cfg``; raises DataError when the data cannot be found or read."""
    return _source(cfg.name).load(cfg)


def fingerprint(cfg: DataConfig) -> str:
    """sha256 of the dataset's content (arrays, batch files, or file list with sizes)."""
    return _source(cfg.name).fingerprint(cfg)


def _check_subset(name: str, ds: Dataset, num_classes: int, per_class: bool) -> None:
    """Non-empty, labels in range, and one item (one per class if ``per_class``) decodes and transforms."""
    targets: list[int] = list(getattr(ds, "targets"))
    if not targets:
        raise DataError(f"the {name} split is empty: add data or lower data.val_fraction/test_fraction")
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad:
        raise DataError(f"the {name} split has label {bad[0]} outside [0, {num_classes}): check the class list")
    first = {t: i for i, t in reversed(list(enumerate(targets)))} if per_class else {targets[0]: 0}
    for i in sorted(first.values()):
        ds[i]


def validate(subsets: Subsets) -> None:
    """Raise DataError unless every split is non-empty and readable (one decoded image per class and split)."""
    with torch.random.fork_rng(devices=[]):  # augmentations must not move the caller's RNG
        for name in ("train", "val", "test"):
            _check_subset(name, getattr(subsets, name), subsets.num_classes, per_class=True)


def manifest(cfg: DataConfig, subsets: Subsets) -> dict[str, Any]:
    """The description of the prepared dataset written to ``manifest.json``."""
    return {
        "name": cfg.name,
        "path": str(Path(cfg.path).expanduser().resolve()) if cfg.path else None,
        "num_classes": subsets.num_classes,
        "in_chans": subsets.in_chans,
        "class_names": subsets.class_names,
        "sizes": {k: len(getattr(subsets, k)) for k in ("train", "val", "test")},
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "fingerprint": fingerprint(cfg),
    }


def prepare(cfg: DataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Check that ``cfg``'s dataset is readable and write ``out_dir/manifest.json``; return the manifest."""
    subsets = load_subsets(cfg)
    validate(subsets)
    info = manifest(cfg, subsets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(info, out / MANIFEST)
    log.debug("prepared %s: %s -> %s", cfg.name, info["sizes"], out / MANIFEST)
    return info
