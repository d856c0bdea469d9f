"""The adaptive network as an MLflow Model: a pyfunc whose one artifact is the train stage's model file. A request
names its sub-network (``params={"skip": "TTFF"}``) or a budget (``{"max_latency_ms": 5}``, with an optional
``"batch"``; ``{"max_macs": M}``; ``{"min_acc": A}``), answered from the tables attached beside the model
(:data:`ATTACHED`: the evaluate stage's grid, ``adaskip profile``'s latency tables per device)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from .tags import SKIP_TAG


class BadRequest(MlflowException):
    """HTTP 400 whose message is ours. The scoring server rewrites an MlflowException's ``message`` as "Failed to
    predict data '<the input>'. Error: ..." (mlflow.pyfunc.scoring_server.invocations): here the first value set
    stays, so the client reads what is wrong first."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


class AdaptiveDepthModel(mlflow.pyfunc.PythonModel):
    """Rebuilds models/model.pt with :func:`adaskip.models.file.load_model`; ``predict`` returns float32 logits
    (N, num_classes) of the requested sub-network, or for a budget ``{"skip": <chosen>, "logits": ..., "acc1", "macs",
    "p50_ms", "batch"}`` (the figures it was chosen by). Served
    with ``--env-manager local`` from an environment where adaskip is installed."""

    def load_context(self, context) -> None:
        from mlflow.models import Model

        from adaskip.models.file import load_model
        from adaskip.serving import build_menu, read_attached

        path = Path(context.artifacts["model"])
        self.net, obj = load_model(path)
        self.net.eval()
        root = path.parent.parent  # the MLflow Model directory: artifacts/model.pt
        size = obj.get("image_size") or Model.load(root).signature.inputs.inputs[0].shape[-1]  # files before it
        grid, tables = read_attached(root)
        self.menu = build_menu(self.net, int(size), grid, tables, _version_skip(root), log=_log)
        # the scoring server runs requests in threads; a forward sets its skip-aware norms as module state, so two
        # at once with different skips would mix their norm sets (answers off by ~0.2 logits under load)
        self.lock = threading.Lock()

    def predict(self, context, model_input, params=None):  # no type hints: the signature validates
        import torch

        from adaskip.serving import RequestError

        try:
            skip, figures = self.menu.pick(params)
        except RequestError as e:
            raise BadRequest(str(e)) from None
        if isinstance(model_input, dict):  # {"inputs": {"name": ...}}: the one tensor
            (model_input,) = model_input.values()
        if hasattr(model_input, "to_numpy"):  # a DataFrame of one tensor column
            model_input = np.stack(model_input.iloc[:, 0].to_numpy())
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with self.lock, torch.inference_mode():
            logits = self.net(x, skip=skip).float().numpy()
        return {"skip": skip, "logits": logits, **figures} if figures else logits


def _version_skip(root: Path) -> str | None:
    """The ``adaskip.skip`` tag of the registered version this model was loaded as (``models:/adaskip@base``: MLflow
    writes the resolved name and version into ``registered_model_meta``), None when loaded otherwise."""
    import yaml

    meta = Path(root) / "registered_model_meta"
    if not meta.is_file():
        return None
    info = yaml.safe_load(meta.read_text())
    try:
        tags = mlflow.MlflowClient().get_model_version(info["model_name"], str(info["model_version"])).tags
    except MlflowException as e:
        _log(
            f"adaskip: the registry did not say which sub-network version {info} serves ({e.message[:200]}): "
            "the super-net by default"
        )
        return None
    skip = tags.get(SKIP_TAG)
    _log(f"adaskip: serving {info['model_name']} version {info['model_version']}, by default {skip or 'the super-net'}")
    return skip


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # the server's log: one line at load


def signature(image_size: int, num_classes: int, num_stages: int):
    """Input: float32 images (-1, 3, H, W); output: logits (-1, num_classes); params: ``skip`` (default: the
    registered version's sub-network, else the super-net) and the budget ``max_latency_ms``, ``batch``, ``max_macs``,
    ``min_acc``, ``prefer`` (none by default)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    params = [
        ParamSpec("skip", "string", None),
        ParamSpec("max_latency_ms", "double", None),
        ParamSpec("batch", "long", None),
        ParamSpec("max_macs", "double", None),
        ParamSpec("min_acc", "double", None),
        ParamSpec("prefer", "string", None),  # versions registered before it drop it (MLflow ignores unknown params)
    ]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, image_size, image_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
        params=ParamSchema(params),
    )


def requirements() -> list[str]:
    """Pinned from this environment (no 3-5 s inference); adaskip itself comes from the serving environment."""
    import importlib.metadata as md

    return [f"{p}=={md.version(p)}" for p in ("torch", "timm", "numpy", "pandas")]
