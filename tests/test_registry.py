"""The adaptive network as an MLflow Model in the Model Registry, served by the real `mlflow models serve` with the
sub-network as an inference parameter; and MLflow as users browse it: experiment kind, per-stage skip params,
dataset inputs, Pareto tags on the registered version."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.usefixtures("one_thread")]  # a server start: ~30-60 s on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 (local test server)
        return json.loads(r.read())


def test_registered_model_serves_every_subnetwork(tmp_path: Path, tiny_params, mlflow_uri: str, monkeypatch):
    import torch

    from adaskip.tracking import EXPERIMENT_KIND, Tracker, pareto_tags, skip_params
    from adaskip.training import save_atomic

    monkeypatch.chdir(tmp_path)  # the store's default artifact root (./mlruns) lands in tmp_path
    size = 16
    net = tiny_params.build_model(num_classes=10)
    torch.manual_seed(0)
    with torch.no_grad():  # timm zero-inits each block's last norm: untrained, every sub-network would agree
        for p in net.parameters():
            if p.dim() == 1 and not p.any():
                p.uniform_(0.5, 1.5)
    save_atomic({"spec": net.spec, "state_dict": net.state_dict(), "image_size": size},
                tmp_path / "models" / "model.pt")
    model_file = "models/model.pt"
    S = net.num_stages

    # train stage: dataset input, MLflow Model, registration
    tracker = Tracker(mlflow_uri, "adaskip")
    with tracker.run("train-x", {"adaskip.stage": "train"}) as train_run:
        tracker.log_dataset(train_run, tiny_params.data.model_dump(mode="json"), "training")
        version = tracker.log_model(train_run, model_file, "adaskip", size)
    assert version == 1
    # evaluate stage: grid children with skip params, Pareto tags on the version that serves this file
    grid = pd.DataFrame({"skip": ["T" * S, "F" * S], "acc1": [80.0, 90.5], "macs": [1.2e6, 3.4e6],
                         "pareto": [True, True]})
    with tracker.run("evaluate-x", {"adaskip.stage": "evaluate"}) as parent:
        tracker.log_dataset(parent, tiny_params.data.model_dump(mode="json"), "evaluation")
        for skip in grid.skip:
            with tracker.run(skip, {"skip": skip}, parent) as child:
                tracker.log_params(child, skip_params(skip))
        found = tracker.model_version("adaskip", model_file)
        assert found == "1"
        tracker.tag_model_version("adaskip", found, pareto_tags(grid))

    client = tracker.client
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    child = tracker.children(parent)[0]
    assert child.data.params["skip"] == child.info.run_name
    assert [child.data.params[f"skip_stage{i}"] for i in range(1, S + 1)] == [
        str(c == "T").lower() for c in child.info.run_name]
    for run_id, context in ((train_run, "training"), (parent, "evaluation")):
        (ds,) = client.get_run(run_id).inputs.dataset_inputs
        assert ds.dataset.name == tiny_params.data.name and ds.dataset.digest
        assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == context
    mv = client.get_model_version("adaskip", "1")
    assert mv.run_id == train_run
    assert mv.tags["pareto"] == f"{'T' * S}:80.0@1.2M,{'F' * S}:90.5@3.4M"
    assert mv.tags[f"acc1.{'F' * S}"] == "90.50"
    assert client.get_run(train_run).data.tags["adaskip.registered_model"] == "adaskip/1"

    # serve the registered version with the real CLI, in this environment
    port = _free_port()
    bindir = str(Path(sys.executable).parent)  # the server runs `uvicorn` from PATH: this venv's
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1",
           "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([str(Path(bindir) / "mlflow"), "models", "serve", "-m", "models:/adaskip/1",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):  # noqa: S310
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
        net.eval()
        answers = {}
        for skip in ("T" * S, "F" * S):
            got = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": x.tolist(), "params": {"skip": skip}})
            answers[skip] = np.asarray(got["predictions"], dtype=np.float32)
            with torch.inference_mode():
                want = net(torch.from_numpy(x), skip=skip).numpy()
            assert answers[skip].shape == (2, 10)
            np.testing.assert_allclose(answers[skip], want, atol=1e-4)
        assert not np.allclose(answers["T" * S], answers["F" * S], atol=1e-3)
        default = np.asarray(_post(f"http://127.0.0.1:{port}/invocations", {"inputs": x.tolist()})["predictions"])
        np.testing.assert_allclose(default, answers["F" * S], atol=1e-5)  # no params: the super-net
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()
