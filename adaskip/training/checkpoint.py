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


def model_spec(name: str, num_classes: int, split: list[int], skip_aware_norm: bool, num_stages: int,
               kwargs: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to rebuild the architecture of a saved model."""
    return {"name": name, "num_classes": num_classes, "split": list(split), "skip_aware_norm": skip_aware_norm,
            "num_stages": num_stages, "kwargs": dict(kwargs)}


def build_from_spec(spec: dict[str, Any]) -> AdaptiveDepthNet:
    args = {k: v for k, v in spec.items() if k != "kwargs"}
    return create_model(**args, **spec.get("kwargs", {}))


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash never leaves a half file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); errors say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "delete it and re-run the stage that writes it") from None
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
        raise CheckpointError(f"checkpoint {source} does not match the model {model.family} split={model.split}: {first}") from None
