"""Checkpoints and the final model file: plain tensors and primitives, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import AdaskipError
from ..files import atomic_path
from ..models import AdaptiveDepthNet, create_model


class CheckpointError(AdaskipError, ValueError):
    """A checkpoint is missing, truncated, corrupt or for another model."""


def build_from_spec(spec: dict[str, Any]) -> AdaptiveDepthNet:
    """The architecture a model file's ``"spec"`` (an ``AdaptiveDepthNet.spec``) describes, with random weights."""
    args = {k: v for k, v in spec.items() if k != "kwargs"}
    return create_model(**args, **spec.get("kwargs", {}))


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves a half file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU; a missing, truncated or corrupt file is a CheckpointError
    naming ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(
            f"{what} {path} is truncated or corrupt ({type(e).__name__}: {first}); delete it and re-run what wrote it"
        ) from None


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); errors say what is wrong with the file."""
    obj = read_torch_file(path)
    if not isinstance(obj, dict) or "state_dict" not in obj or "spec" not in obj:
        raise CheckpointError(f"checkpoint {path} is not an adaskip model file (expected keys 'spec' and 'state_dict')")
    return obj


def load_model(path: str | os.PathLike) -> tuple[AdaptiveDepthNet, dict[str, Any]]:
    """Rebuild the model saved at ``path`` and load its weights; returns (model, the whole file dict)."""
    obj = load_file(path)
    model = build_from_spec(obj["spec"])
    load_state(model, obj["state_dict"], str(path))
    return model, obj


def load_state(model: AdaptiveDepthNet, state_dict: dict[str, Any], source: str) -> None:
    """Strict load with one readable error for a checkpoint of another architecture."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"checkpoint {source} does not match the model {model.family} split={model.split}: {first}"
        ) from None
