"""Every private API adaskip leans on (docs/library.md "Private APIs"), checked where it is: an upgrade of Ray, torch,
timm or MLflow that moves or renames one fails here, by name, instead of deep inside a run."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect

import pytest

# (module, attribute path, methods adaskip overrides or calls on it, the pinned version it was checked with)
PRIVATE = [
    ("ray.train.torch.config", "_TorchBackend", ["on_start"], "ray"),
    ("ray.train.v2._internal.execution.failure_handling", "DefaultFailurePolicy", ["_is_retryable_error"], "ray"),
    (
        "ray.train.v2._internal.execution.scaling_policy.fixed",
        "FixedScalingPolicy",
        ["after_controller_start", "_maybe_send_resource_request", "_cancel_resource_request"],
        "ray",
    ),
    ("ray.train.v2.api.data_parallel_trainer", "DataParallelTrainer", ["_initialize_and_run_controller"], "ray"),
    ("ray._private.ray_logging", "global_worker_stdstream_dispatcher", ["add_handler"], "ray"),
    ("torch.onnx._constants", "ONNX_MIN_OPSET", [], "torch"),
    ("torch.onnx._constants", "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", [], "torch"),
    ("timm.models.vision_transformer", "VisionTransformer", ["_pos_embed"], "timm"),
    ("mlflow.tracking._tracking_service.utils", "_use_tracking_uri", [], "mlflow"),
    ("mlflow.data.pandas_dataset", "PandasDataset", ["_to_mlflow_entity"], "mlflow"),
]


@pytest.mark.parametrize("module,name,methods,dist", PRIVATE, ids=[f"{m}.{n}" for m, n, _, _ in PRIVATE])
def test_private_api_is_where_adaskip_uses_it(module: str, name: str, methods: list[str], dist: str):
    where = f"{module}.{name} ({dist} {md.version(dist)})"
    obj = getattr(importlib.import_module(module), name, None)
    assert obj is not None, f"{where} is gone: see docs/library.md 'Private APIs' for what uses it"
    for method in methods:
        assert callable(getattr(obj, method, None)), f"{where} has no {method}: see docs/library.md 'Private APIs'"


def test_trainer_controller_hook_takes_the_arguments_adaskip_replaces():
    from ray.train.v2._internal.execution.controller import TrainController

    params = inspect.signature(TrainController.__init__).parameters
    assert {"failure_policy", "scaling_policy", "callbacks"} <= set(params), list(params)


def test_scoring_server_rewrites_the_message_of_a_model_error():
    """BadRequest keeps its message because the scoring server assigns ``e.message`` (not str(e)) before answering."""
    from mlflow.pyfunc import scoring_server

    source = inspect.getsource(scoring_server.invocations)
    assert "e.message = " in source and "raise e" in source


def test_registered_model_meta_names_the_resolved_version():
    """The served model finds its version (and so its default sub-network) in the file MLflow writes on download."""
    from mlflow.store.artifact import models_artifact_repo

    assert models_artifact_repo.REGISTERED_MODEL_META_FILE_NAME == "registered_model_meta"
    source = inspect.getsource(models_artifact_repo.ModelsArtifactRepository._add_registered_model_meta_file)
    assert '"model_name"' in source and '"model_version"' in source
