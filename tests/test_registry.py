"""The adaptive network as an MLflow Model in the Model Registry, served by the real `mlflow models serve` with the
sub-network as an inference parameter; and MLflow as users browse it: experiment kind, per-stage skip params,
dataset inputs, Pareto tags on the registered version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from adaskip.build import build_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.subprocess,
    pytest.mark.usefixtures("one_thread"),
]  # a server start: ~30-60 s on 2 busy cores


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 (local test server)
        return json.loads(r.read())


def test_registered_model_serves_every_subnetwork(tmp_path: Path, tiny_params, mlflow_uri: str, monkeypatch):
    import torch

    from adaskip.select import aliases, with_latency
    from adaskip.serving import GRID_FILE
    from adaskip.tracking import EXPERIMENT_KIND, Tracker, pareto_tags, skip_params
    from helpers import local_server
    from adaskip.training import save_atomic

    monkeypatch.chdir(tmp_path)  # the store's default artifact root (./mlruns) lands in tmp_path
    size = 16
    net = build_model(tiny_params, num_classes=10)
    torch.manual_seed(0)
    with torch.no_grad():  # timm zero-inits each block's last norm: untrained, every sub-network would agree
        for p in net.parameters():
            if p.dim() == 1 and not p.any():
                p.uniform_(0.5, 1.5)
    save_atomic(
        {"spec": net.spec, "state_dict": net.state_dict(), "image_size": size}, tmp_path / "models" / "model.pt"
    )
    model_file = "models/model.pt"
    S = net.num_stages

    # train stage: dataset input, MLflow Model, registration
    tracker = Tracker(mlflow_uri, "adaskip")
    with tracker.run("train-x", {"adaskip.stage": "train"}) as train_run:
        tracker.log_dataset(train_run, tiny_params.data.model_dump(mode="json"), "training")
        version = tracker.log_model(train_run, model_file, "adaskip", size)
    assert version == 1
    # evaluate stage: grid children with skip params, Pareto tags on the version that serves this file
    grid = pd.DataFrame(
        {"skip": ["T" * S, "F" * S], "acc1": [80.0, 90.5], "macs": [1.2e6, 3.4e6], "pareto": [True, True]}
    )
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
        str(c == "T").lower() for c in child.info.run_name
    ]
    for run_id, context in ((train_run, "training"), (parent, "evaluation")):
        (ds,) = client.get_run(run_id).inputs.dataset_inputs
        assert ds.dataset.name == tiny_params.data.name and ds.dataset.digest
        assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == context
    mv = client.get_model_version("adaskip", "1")
    assert mv.run_id == train_run
    assert mv.tags["pareto"] == f"{'T' * S}:80.0@1.2M,{'F' * S}:90.5@3.4M"
    assert client.get_run(train_run).data.tags["adaskip.registered_model"] == "adaskip/1"

    # evaluate's attachments: the grid beside the model, aliases on versions serving each sub-network by default
    grid = _grid(net, size)
    grid.to_csv(tmp_path / "grid.csv", index=False)
    tracker.attach_to_model("adaskip", "1", {GRID_FILE: grid})
    named = {alias: tracker.set_alias("adaskip", "1", alias, skip) for alias, skip in aliases(grid).items()}
    assert named["super"] == "1" and named["base"] == "2"
    assert tracker.set_alias("adaskip", "1", "base", "T" * S) == "2"  # a re-run registers nothing new
    assert client.get_model_version_by_alias("adaskip", "base").tags["adaskip.skip"] == "T" * S
    assert tracker.model_version("adaskip", model_file) == "1"  # the train stage's version, not an alias's

    # adaskip profile through the registry, as a user runs it: the table attached to version 1
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1", "ADASKIP_PROGRESS": "0"}
    cli = [str(Path(sys.executable).parent / "adaskip")]
    done = subprocess.run(
        cli
        + [
            "profile",
            "models:/adaskip/1",
            "--batch",
            "1",
            "4",
            "--threads",
            "1",
            "--reps",
            "5",
            "--out",
            "latency.csv",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "attached to adaskip version 1 for cpu:" in done.stdout
    table = pd.read_csv(tmp_path / "latency.csv", dtype={"skip": str})
    assert len(table) == 2 * 2**S and set(table.threads) == {1} and set(table.batch_size) == {1, 4}
    front = with_latency(grid, [tmp_path / "latency.csv"])  # every sub-network is a candidate, not only the front
    b1 = sorted(front["latency_p50_ms_b1"])
    budgets = {
        "tight": {"max_latency_ms": b1[len(b1) // 2]},
        "loose": {"max_latency_ms": b1[-1] * 2},
        "tight at batch 4": {"max_latency_ms": float(front["latency_p50_ms_b4"].median()), "batch": 4},
        "MACs": {"max_macs": float(front.macs.median())},
        "accuracy": {"min_acc": float(front.acc1.median())},
    }

    def selected(budget: dict) -> str:  # what `adaskip select` picks from the same grid and table
        flags = [a for k, v in budget.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        out = subprocess.run(
            cli + ["select", "--grid", "grid.csv", "--latency", "latency.csv"] + flags,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split(":")[0]

    # serve @base with the real CLI, in this environment: its default is the base-net; skips and budgets per request
    with local_server(mlflow_uri, "models:/adaskip@base", tmp_path / "serve.log") as url:
        x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
        net.eval()

        def library(skip: str) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(x), skip=skip).numpy()

        answers = {}
        for skip in ("T" * S, "F" * S):
            got = _post(url, {"inputs": x.tolist(), "params": {"skip": skip}})
            answers[skip] = np.asarray(got["predictions"], dtype=np.float32)
            assert answers[skip].shape == (2, 10)
            np.testing.assert_allclose(answers[skip], library(skip), atol=1e-4)
        assert not np.allclose(answers["T" * S], answers["F" * S], atol=1e-3)
        default = np.asarray(_post(url, {"inputs": x.tolist()})["predictions"])
        np.testing.assert_allclose(default, answers["T" * S], atol=1e-5)  # no params: @base's sub-network
        chosen = {}
        for what, budget in budgets.items():
            got = _post(url, {"inputs": x.tolist(), "params": budget})["predictions"]
            chosen[what] = got["skip"]
            assert got["skip"] == selected(budget), what
            np.testing.assert_allclose(np.asarray(got["logits"]), library(got["skip"]), atol=1e-4)
        for what in ("tight", "loose"):  # a cost cap: the most accurate within it, ties to the faster
            fits = front[front.latency_p50_ms_b1 <= budgets[what]["max_latency_ms"]]
            best = fits.sort_values(["acc1", "latency_p50_ms_b1"], ascending=[False, True]).iloc[0]
            assert chosen[what] == best.skip, (what, chosen)

        status, body = _post_error(url, {"inputs": x.tolist(), "params": {"max_latency_ms": b1[0] / 2}})
        assert status == 400 and body["message"].startswith(f"no sub-network fits latency <= {b1[0] / 2:g} ms"), body
        assert f"p50 {b1[0]:.3g} ms" in body["message"]  # the smallest achievable latency
        bad = "X" + "T" * (S - 1)
        for params, start in (
            ({"skip": bad}, f"skip '{bad}' is not a sub-network of this model"),
            ({"max_latency_ms": -1}, "max_latency_ms must be a number >= 0, got -1.0"),
            ({"max_macs": 1e6, "batch": 0}, "batch must be an integer >= 1, got 0"),
            ({"skip": "F" * S, "min_acc": 50}, "skip and a budget (min_acc) were both given"),
            ({"max_latency_ms": 1, "batch": 7}, "batch 7: no latency measured at that batch"),
        ):
            status, body = _post_error(url, {"inputs": x.tolist(), "params": params})
            assert status == 400 and body["message"].startswith(start), (params, body)
    log = (tmp_path / "serve.log").read_text()
    assert f"by default {'T' * S}" in log and "latency table for cpu:" in log and "measured" not in log, log[-3000:]


def _grid(net, size: int) -> pd.DataFrame:
    """An evaluation grid of ``net``: its real MACs, a top-1 that grows with them (as training gives) and the front."""
    from adaskip.evaluation import complexity_table, pareto_front

    grid = complexity_table(net, None, (3, size, size))
    grid["acc1"] = (60 + 30 * grid.macs / grid.macs.max() - 0.1 * (grid.index % 3)).round(2)
    grid["pareto"] = pareto_front(grid.macs, grid.acc1)
    return grid


def _post_error(url: str, body: dict) -> tuple[int, dict]:
    try:
        _post(url, body)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    raise AssertionError(f"{body['params']} was answered")


def test_an_experiment_never_moves_an_alias_another_model_holds(tmp_path: Path, tiny_params, mlflow_uri, monkeypatch):
    """The registry's rule: evaluate points an alias at its version only where no version holds it (the first
    registration) or the same model does (re-evaluated); another model's version is only offered the aliases
    (candidate tags) until `adaskip promote` moves them, and the version an alias leaves loses its alias tag."""
    import torch
    import yaml

    from adaskip.tracking import Tracker
    from adaskip.training import save_atomic

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": mlflow_uri}}))
    tracker = Tracker(mlflow_uri, "adaskip")
    versions, S = [], build_model(tiny_params).num_stages
    for seed in (0, 1):  # two trainings: two models
        torch.manual_seed(seed)
        net = build_model(tiny_params, num_classes=10)
        path = tmp_path / f"model{seed}.pt"
        save_atomic({"spec": net.spec, "state_dict": net.state_dict(), "image_size": 16}, path)
        with tracker.run(f"train-{seed}", {"adaskip.stage": "train"}) as run_id:
            versions.append(str(tracker.log_model(run_id, path, "adaskip", 16, tags={"train.alpha": str(seed)})))
    first, second = versions
    wanted = {"super": "F" * S, "base": "T" * S}

    taken, kept = tracker.offer_aliases("adaskip", first, wanted)  # the first registration takes them
    assert taken["super"] == first and kept == {}
    base = taken["base"]
    assert tracker.offer_aliases("adaskip", first, wanted) == (taken, {})  # re-evaluated: the same versions

    assert tracker.offer_aliases("adaskip", second, wanted) == ({}, {"super": first, "base": base})
    client = tracker.client
    assert str(client.get_model_version_by_alias("adaskip", "base").version) == base  # still the first model
    offered = client.get_model_version("adaskip", second).tags
    assert offered["adaskip.candidate.base"] == "T" * S and offered["train.alpha"] == "1"

    cli = [str(Path(sys.executable).parent / "adaskip"), "promote"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([*cli, second], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"adaskip@super -> version {second}" in done.stdout
    now = {a: client.get_model_version_by_alias("adaskip", a) for a in wanted}
    assert str(now["super"].version) == second
    assert now["base"].source == client.get_model_version("adaskip", second).source
    assert now["base"].tags["adaskip.alias.base"] == "T" * S
    for old in (first, base):  # the versions the aliases left say so no more
        assert not any(k.startswith("adaskip.alias.") for k in client.get_model_version("adaskip", old).tags)

    never = subprocess.run([*cli, base], capture_output=True, text=True, env=env, timeout=300)  # an alias's version
    assert never.returncode == 2 and never.stderr.startswith(f"error: adaskip version {base} was never evaluated")
    assert len(never.stderr.strip().splitlines()) == 1
