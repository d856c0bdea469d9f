"""ImageFolder-style datasets: ``path/train/<class>/*`` plus ``path/val/<class>/*`` (or ``path/test``)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .base import Subsets, carve_val
from .config import DataConfig, DataError, one_line
from .transforms import build_transform

log = logging.getLogger(__name__)

HELD_OUT_DIRS = ("val", "test")  # the first one present becomes the test split
_LAYOUT = "lay the images out as train/<class>/*.png and val/<class>/*.png"


def safe_loader(path: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image; any decoding failure becomes a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image '{path}' ({one_line(e)}): delete or replace the file") from e


def is_image(path: str) -> bool:
    """An image file by extension; hidden files (``._x.png`` from macOS, editors' temp files) are skipped."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def class_folders(directory: str | Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``directory``."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


class SafeImageFolder(ImageFolder):
    """ImageFolder with ``safe_loader``; ``classes`` fixes the class list (so val uses train's label indices)."""

    def __init__(self, root: str | Path, classes: Optional[Sequence[str]] = None) -> None:
        self._fixed_classes = list(classes) if classes is not None else None
        super().__init__(str(root), loader=safe_loader, is_valid_file=is_image, allow_empty=True)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        found = class_folders(directory)
        if not found:
            raise DataError(f"'{directory}' holds no class folders: {_LAYOUT}")
        if self._fixed_classes is not None:
            extra = sorted(set(found) - set(self._fixed_classes))
            if extra:
                raise DataError(
                    f"'{directory}' has class folders missing from train/: {', '.join(extra[:5])}: "
                    "use the same class folder names in every split"
                )
            found = self._fixed_classes
        return found, {c: i for i, c in enumerate(found)}


def _dirs(cfg: DataConfig) -> tuple[Path, Path]:
    root = Path(str(cfg.path)).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.path '{cfg.path}' does not exist or is not a folder: point data.path in "
            f"params.yaml at a folder with train/ and val/ (or test/) subfolders"
        )
    if not (root / "train").is_dir():
        raise DataError(f"data.path '{cfg.path}' has no train/ subfolder: {_LAYOUT}")
    held = [root / d for d in HELD_OUT_DIRS if (root / d).is_dir()]
    if not held:
        raise DataError(f"data.path '{cfg.path}' has neither val/ nor test/ subfolder: {_LAYOUT}")
    return root / "train", held[0]


def _folder(root: Path, classes: Optional[Sequence[str]] = None) -> SafeImageFolder:
    try:
        return SafeImageFolder(root, classes)
    except OSError as e:
        raise DataError(f"cannot list '{root}' ({one_line(e)}): check that the folder is readable") from e


def _open(cfg: DataConfig) -> tuple[SafeImageFolder, SafeImageFolder]:
    train_dir, test_dir = _dirs(cfg)
    train = _folder(train_dir)
    counts = Counter(train.targets)
    empty = [c for i, c in enumerate(train.classes) if counts[i] == 0]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty[:5])} in '{train_dir}' hold no images "
            f"({'/'.join(IMG_EXTENSIONS)}): add images or remove the folder(s)"
        )
    test = _folder(test_dir, train.classes)
    if len(test) == 0:
        raise DataError(f"'{test_dir}' holds no images: {_LAYOUT}")
    missing = sorted(set(train.classes) - {test.classes[t] for t in set(test.targets)})
    if missing:
        log.warning("%s has no images of %d class(es), e.g. %s", test_dir, len(missing), missing[:3])
    return train, test


def fingerprint(cfg: DataConfig) -> str:
    """sha256 over the sorted relative paths and byte sizes of every image of train/ and the held-out folder."""
    root = Path(str(cfg.path)).expanduser()
    h = hashlib.sha256()
    files = sorted(os.path.relpath(p, root) for ds in _open(cfg) for p, _ in ds.samples)
    for rel in files:
        h.update(f"{rel}\t{os.path.getsize(root / rel)}\n".encode())
    return h.hexdigest()


def load(cfg: DataConfig) -> Subsets:
    """train/ minus a stratified ``val_fraction`` carve, that carve as val, and val/ (or test/) as test."""
    train_base, test_base = _open(cfg)
    subsets = carve_val(
        train_base,
        test_base,
        cfg.val_fraction,
        cfg.seed,
        lambda is_training: build_transform(cfg.image_size, is_training, cfg.augment),
    )
    sizes = (len(train_base.classes), len(subsets.train), len(subsets.val), len(subsets.test))
    log.info("imagefolder %s: %d classes, train %d, val %d, test %d (%s)", cfg.path, *sizes, Path(test_base.root).name)
    return subsets
