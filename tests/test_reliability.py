"""Bad input that is not params.yaml: damaged or foreign checkpoints, an unreachable tracking server; and what a
local run exposes on the network."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray.train
import torch

from adaskip.models import create_model
from adaskip.tracking import Tracker, TrackingError
from adaskip.training import CheckpointError, load_model, save_atomic

from helpers import PROGRAMS, ROOT, merge


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    net = create_model("resnet18", 10, channels=[8, 8, 16, 16])
    path = tmp_path / "models" / "model.pt"
    path.parent.mkdir()
    save_atomic({"spec": net.spec, "state_dict": net.state_dict(), "macs": {}, "metrics": {}}, path)
    return path


def test_good_file_round_trips(model_file: Path):
    model, obj = load_model(model_file)
    assert model.split == obj["spec"]["split"]


def test_truncated_checkpoint(model_file: Path):
    model_file.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(model_file)


def test_checkpoint_of_another_model(model_file: Path):
    obj = torch.load(model_file, weights_only=True)
    obj["spec"]["kwargs"]["channels"] = [8, 8, 16, 32]  # the weights no longer fit
    torch.save(obj, model_file)
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_model(model_file)


def test_not_an_adaskip_file(model_file: Path):
    torch.save({"weights": torch.zeros(1)}, model_file)
    with pytest.raises(CheckpointError, match="not an adaskip model file"):
        load_model(model_file)


def test_pickled_code_is_refused(model_file: Path):
    torch.save({"spec": {}, "state_dict": {}, "evil": Path("x")}, model_file)  # an arbitrary class: not weights
    with pytest.raises(CheckpointError):
        load_model(model_file)


def test_unreachable_tracking_server_fails_fast():
    t = time.time()
    with pytest.raises(TrackingError, match="unreachable"):
        Tracker("http://127.0.0.1:9", "x")  # discard port: nothing listens
    assert time.time() - t < 10


@pytest.mark.subprocess
def test_evaluate_stage_on_a_corrupt_model(model_file: Path):
    """One line naming the file, exit 2, no traceback, no grid written."""
    model_file.write_bytes(b"not a checkpoint")
    (model_file.parent.parent / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    r = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "evaluate.py")],
        cwd=model_file.parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "models/model.pt" in r.stderr and "corrupt" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (model_file.parent.parent / "results" / "eval_grid.csv").exists()


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path):
    from adaskip.files import atomic_path, write_json

    out = tmp_path / "results" / "grid.csv"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp:
            tmp.write_text("half a fi")
            raise KeyboardInterrupt
    assert list(out.parent.iterdir()) == []  # neither the output nor the temp file
    write_json({"b": 1, "a": [2]}, out)
    assert out.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n' and len(list(out.parent.iterdir())) == 1


@pytest.mark.ray
@pytest.mark.ddp
@pytest.mark.subprocess
@pytest.mark.extended  # a Ray of its own and a 2-worker Ray Train run (60 s): CI stays under 20 minutes
def test_local_ray_listens_on_loopback_only(tmp_path: Path):
    """The local Ray a stage starts (no RAY_ADDRESS) opens no port on a network interface: GCS, raylet, agents,
    driver and workers listen on 127.0.0.1, and so does the rendezvous store of a 2-worker Ray Train run with
    adaskip's torch config (which torch alone would bind to every interface)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    out = tmp_path / "rank0.txt"
    r = subprocess.run(
        [sys.executable, str(PROGRAMS / "listeners.py"), str(out), str(tmp_path / "ray")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rank0 = [line.split() for line in out.read_text().splitlines() if line.strip()]
    assert ["sum", "2.0", "0"] in rank0  # the process group worked
    listening = [line.split() for line in r.stdout.splitlines() if line.strip()] + [x for x in rank0 if x[0] != "sum"]
    assert any(x[0] == "gcs_server" for x in listening) and len(rank0) > 2, (r.stdout, rank0)  # it sees Ray's servers
    assert all(x[-2] in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for x in listening), (r.stdout, rank0)


@pytest.mark.subprocess
def test_importing_adaskip_leaves_the_environment_alone():
    """Ray's environment is set by configure_ray_env, called by the stage harness and the CLI, not on import;
    what the user set wins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    r = subprocess.run(
        [sys.executable, str(PROGRAMS / "env_on_import.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "RAY_AUTH_MODE": "disabled"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["0", "0", "disabled"]


@pytest.mark.ray
@pytest.mark.ddp
def test_recurring_worker_error_is_not_retried(ray_cluster, tiny_raw, tmp_path: Path):
    """A worker error that every restart would raise again (here: pretrained weights that are not a state dict;
    validation only checks the file exists) ends the run after the first failure, with train.max_failures left,
    as one AdaskipError naming the problem."""
    from adaskip.config import Params
    from adaskip.orchestration.storage import Storage
    from adaskip.orchestration.raytrain import RecurringTrainingError
    from adaskip.orchestration.train import run_training

    bad = tmp_path / "weights.pth"
    torch.save({"not": "weights"}, bad)
    params = Params.model_validate(merge(tiny_raw, {"model": {"pretrained": str(bad)}, "train": {"max_failures": 3}}))
    failures = tmp_path / "failures.txt"

    class CountFailures(ray.train.UserCallback):  # local: pickled by value into Ray Train's controller
        def after_exception(self, run_context, worker_exceptions) -> None:
            with failures.open("a") as f:
                f.write(" ".join(f"{rank}:{type(e).__name__}" for rank, e in sorted(worker_exceptions.items())) + "\n")

    with pytest.raises(RecurringTrainingError, match="not retried.*model.pretrained") as err:
        run_training(params, Storage(str(tmp_path / "ray")), "recurring", callbacks=(CountFailures(),))
    assert "\n" not in str(err.value)
    assert len(failures.read_text().splitlines()) == 1, failures.read_text()
