"""The adaptive network as an MLflow Model: a pyfunc whose one artifact is the train stage's model file. The
sub-network is an inference parameter: ``predict(x, params={"skip": "TTFF"})`` (default: the super-net)."""
from __future__ import annotations

import mlflow.pyfunc
import numpy as np


class AdaptiveDepthModel(mlflow.pyfunc.PythonModel):
    """Rebuilds models/model.pt with :func:`adaskip.training.load_model`; ``predict`` returns float32 logits
    (N, num_classes) of the sub-network ``params["skip"]``. Served with ``--env-manager local`` from an
    environment where adaskip is installed."""

    def load_context(self, context) -> None:
        from adaskip.training import load_model

        self.net, _ = load_model(context.artifacts["model"])
        self.net.eval()

    def predict(self, context, model_input, params=None):  # no type hints: the signature validates
        import torch

        skip = (params or {}).get("skip") or "F" * self.net.num_stages
        if isinstance(model_input, dict):  # {"inputs": {"name": ...}}: the one tensor
            (model_input,) = model_input.values()
        if hasattr(model_input, "to_numpy"):  # a DataFrame of one tensor column
            model_input = np.stack(model_input.iloc[:, 0].to_numpy())
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.net(x, skip=str(skip)).float().numpy()


def signature(image_size: int, num_classes: int, num_stages: int):
    """Input: float32 images (-1, 3, H, W); output: logits (-1, num_classes); params: ``skip`` (default super-net)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, image_size, image_size))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
                          params=ParamSchema([ParamSpec("skip", "string", "F" * num_stages)]))


def requirements() -> list[str]:
    """Pinned from this environment (no 3-5 s inference); adaskip itself comes from the serving environment."""
    import importlib.metadata as md

    return [f"{p}=={md.version(p)}" for p in ("torch", "timm", "numpy", "pandas")]
