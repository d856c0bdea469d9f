"""Model files, the one place that writes and reads them: a trained network (models/model.pt, a study cell's model in
its cache) is a dict of plain tensors and primitives, loaded with ``weights_only=True``: ``spec`` (the architecture,
``AdaptiveDepthNet.spec``), ``state_dict`` (the weights shipped), ``weights`` (``"ema"`` or ``"raw"``), ``image_size``
(the resolution it was trained at), ``metrics`` and ``macs``. Ray Train checkpoints use the same safe reader."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import AdaskipError
from ..files import atomic_path
from .adaptive import AdaptiveDepthNet, create_model


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


def model_file(state: dict[str, Any], image_size: int, **extra: Any) -> dict[str, Any]:
    """The model file of a finished training run's final state: its EMA weights when ``train.ema`` kept them (they are
    the ones validated), else the raw ones, and which they are."""
    ema = state.get("ema")
    return {
        "spec": state["spec"],
        "state_dict": ema or state["model"],
        "weights": "ema" if ema else "raw",
        "image_size": int(image_size),
        **extra,
    }


def num_stages(spec: dict[str, Any]) -> int:
    """The stages of the network a spec describes (its resolved split has one entry per stage), without building it."""
    return len(spec["split"])
