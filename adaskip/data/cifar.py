"""CIFAR-10/100 from the official python-pickle folder layout on local disk; never downloads."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path

from torchvision.datasets import CIFAR10, CIFAR100

from .base import Subsets, carve_val
from .config import DataConfig, DataError, one_line
from .transforms import build_transform

log = logging.getLogger(__name__)


class _NoMd5:
    """Skips torchvision's md5 checks, so subsets and re-exports of the batches load too.

    Existence is checked by ``_batch_files`` and content is recorded by ``fingerprint`` instead.
    """

    root: str
    base_folder: str
    meta: dict[str, str]

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class LocalCIFAR10(_NoMd5, CIFAR10):
    """torchvision's CIFAR10 (``download=False``) without the md5 checks."""


class LocalCIFAR100(_NoMd5, CIFAR100):
    """torchvision's CIFAR100 (``download=False``) without the md5 checks."""


_CLASSES: dict[str, type[CIFAR10]] = {"cifar10": LocalCIFAR10, "cifar100": LocalCIFAR100}


def _root(cfg: DataConfig) -> Path:
    """The folder holding ``cifar-10-batches-py``; ``data.path`` may also name that folder itself."""
    base = _CLASSES[cfg.name].base_folder
    path = Path(str(cfg.path)).expanduser()
    if not path.exists():
        raise DataError(
            f"data.path '{cfg.path}' does not exist: point data.path in params.yaml at a folder holding {base}"
        )
    return path.parent if path.name == base else path


def _batch_files(cfg: DataConfig) -> list[Path]:
    cls = _CLASSES[cfg.name]
    folder = _root(cfg) / cls.base_folder
    if not folder.is_dir():
        raise DataError(
            f"data.path '{cfg.path}' has no {cls.base_folder} folder: extract "
            f"{cls.filename} there (download it by hand; nothing is downloaded at run time)"
        )
    names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"'{folder}' lacks {', '.join(missing)}: re-extract {cls.filename} into data.path")
    return [folder / n for n in names]


def fingerprint(cfg: DataConfig) -> str:
    """sha256 over the names and bytes of the batch and meta files."""
    h = hashlib.sha256()
    for f in _batch_files(cfg):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _open(cfg: DataConfig, train: bool) -> CIFAR10:
    _batch_files(cfg)
    try:
        return _CLASSES[cfg.name](root=str(_root(cfg)), train=train, download=False)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise DataError(
            f"cannot read the {cfg.name} batches under '{cfg.path}' ({one_line(e)}): "
            f"re-extract {_CLASSES[cfg.name].filename} into data.path"
        ) from e


def load(cfg: DataConfig) -> Subsets:
    """Train minus a stratified ``val_fraction`` carve, that carve as val, and the official test batch."""
    train_base, test_base = _open(cfg, train=True), _open(cfg, train=False)
    subsets = carve_val(
        train_base,
        test_base,
        cfg.val_fraction,
        cfg.seed,
        lambda is_training: build_transform(cfg.image_size, is_training, cfg.augment, native_size=32),
    )
    sizes = (len(subsets.train), len(subsets.val), len(subsets.test))
    log.info("%s from %s: train %d, val %d, test %d", cfg.name, cfg.path, *sizes)
    return subsets
