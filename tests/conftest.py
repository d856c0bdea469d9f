"""Shared fixtures: one local Ray cluster per session, a fresh SQLite MLflow store per test, tiny params."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

# adaskip's Ray env defaults (token auth, no usage stats, ...) before anything imports ray: Ray reads some of them
# once, at its first use in a process, and `ray start` heads and stage subprocesses inherit them from here.
from adaskip.orchestration.cluster import configure_ray_env  # noqa: E402

configure_ray_env()
from adaskip.config import merge_params as merge  # noqa: E402  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]

# Small enough for seconds per epoch on 2 cores, big enough to have 4 stages with choices of split.
TINY: dict[str, Any] = {
    "data": {"image_size": 16},
    "model": {"name": "resnet34", "kwargs": {"resnet": {"channels": [8, 16, 32, 64]}, "swin": {"embed_dim": 24}}},
    "train": {"epochs": 2, "batch_size": 128, "lr": 0.1, "workers": 2},
    "tune": {"num_samples": 2, "epochs": 1},  # splits: auto, from the model's stage depths
    "evaluate": {"latency_reps": 2},
}


def checkpoint_recorded(root: Path, run_glob: str) -> bool:
    """Whether Ray Train's controller has recorded a checkpoint of a run under ``root``: it resumes from those
    only (a checkpoint folder alone, written by the workers before the controller takes it, is not enough)."""
    try:
        return any(json.loads(f.read_text()).get("latest_checkpoint_result")
                   for f in root.glob(f"{run_glob}/checkpoint_manager_snapshot.json"))
    except ValueError:  # caught mid-write
        return False


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a module of tiny models: as fast, and no OpenMP spin-waiting that costs seconds
    per step on a busy 2-core machine (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_raw() -> dict[str, Any]:
    """The shipped params.yaml with TINY applied (a plain dict: tests tweak it further)."""
    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)


@pytest.fixture
def tiny_params(tiny_raw):
    from adaskip.config import Params

    return Params.model_validate(tiny_raw)


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A real, empty SQLite tracking store for this test (absolute: Ray workers have another cwd)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A 2-CPU local Ray cluster for the whole session, in a short temp dir (AF_UNIX path limit)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, _temp_dir=tmp,
             configure_logging=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
