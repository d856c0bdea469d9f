"""Datasets for adaskip: embedded digits by default, CIFAR-10/100 and ImageFolder trees from local disk."""
from .api import MANIFEST, fingerprint, load_splits, prepare, validate
from .base import Splits, TransformSubset
from .config import DataConfig, DataError
from .imagefolder import safe_loader
from .loader import make_loader
from .transforms import build_transform

__all__ = ["MANIFEST", "DataConfig", "DataError", "Splits", "TransformSubset", "build_transform", "fingerprint",
           "load_splits", "make_loader", "prepare", "safe_loader", "validate"]
