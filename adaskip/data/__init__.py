"""Datasets for adaskip: embedded digits by default, CIFAR-10/100 and ImageFolder trees from local disk."""

from __future__ import annotations

import importlib
from typing import Any

from .config import DataConfig, DataError

# Lazy: validating params needs DataConfig only, not torch and timm.
_LAZY = {
    "MANIFEST": "api",
    "fingerprint": "api",
    "load_subsets": "api",
    "prepare": "api",
    "validate": "api",
    "Subsets": "base",
    "TransformSubset": "base",
    "safe_loader": "imagefolder",
    "make_loader": "loader",
    "build_transform": "transforms",
}
__all__ = ["DataConfig", "DataError", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'adaskip.data' has no attribute {name!r}")
