"""Ray Train, Ray Tune and the parallel grid on a real local Ray cluster, logging to a real MLflow store."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from adaskip.tracking import FINISHED, RUNNING, Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _history(tracker: Tracker, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in tracker.client.get_metric_history(run_id, key))


def _kill_a_worker_after(checkpoints: Path, count: int, killed: list[int], timeout: float = 400) -> None:
    """SIGKILL one Ray Train worker process once ``count`` checkpoints exist (a real, abrupt failure)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(checkpoints.glob("checkpoint_*"))) >= count:
            for p in psutil.process_iter(["cmdline"]):
                if any("RayTrainWorker" in part for part in p.info["cmdline"] or []):
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                    return
        time.sleep(0.5)


def test_train_ddp_resume_and_worker_failure(ray_cluster, tiny_params, mlflow_uri, tmp_path):
    """2-worker DDP run; a re-run with more epochs resumes from its checkpoint; a worker SIGKILLed mid-run
    restarts the group from the latest checkpoint; MLflow holds one run with each epoch logged once."""
    from adaskip.orchestration.train import TrackingTarget, run_training

    tracker = Tracker(mlflow_uri, "t")
    run_id = tracker.start_run("train")
    target = TrackingTarget(mlflow_uri, "t", run_id)
    storage = tmp_path / "ray"

    metrics, state = run_training(tiny_params, str(storage), "train-x", target)
    assert metrics["epoch"] == 2 and metrics["val_acc_super"] > 30 and metrics["val_acc_base"] > 30  # chance: 10 %
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "spec", "macs"}
    assert _history(tracker, run_id, "val_acc_super") == [1, 2]  # rank 0 only: not once per worker

    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after, args=(storage / "train-x", 3, killed), daemon=True)
    killer.start()
    metrics, state = run_training(tiny_params, str(storage), "train-x", target, epochs=4)
    killer.join(timeout=1)
    assert killed, "no worker was killed"
    assert metrics["epoch"] == 4 and state["epoch"] == 3
    assert metrics["val_acc_super"] > 50
    # epochs 1-2 from the first run, 3 (before the kill) and 4 (after the restart from epoch 3's checkpoint);
    # each once: the restarted group resumed, it did not redo finished epochs
    assert _history(tracker, run_id, "val_acc_super") == [1, 2, 3, 4]
    assert len(list((storage / "train-x").glob("checkpoint_*"))) <= 2  # num_to_keep
    tracker.end_run(run_id)
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 1


def test_sweep_survives_a_crashing_trial(ray_cluster, tiny_params, mlflow_uri, tmp_path):
    """Two trials at once log to one SQLite store; the one whose loss diverges is recorded as failed with
    its reason and the other finishes; no MLflow run is left RUNNING; no metric is lost."""
    from ray import tune

    from adaskip.orchestration.tune import run_sweep

    params = tiny_params.model_copy(update={"tune": tiny_params.tune.model_copy(update={"num_samples": 1})})
    tracker = Tracker(mlflow_uri, "t")
    parent = tracker.start_run("tune")
    trials = run_sweep(params, str(tmp_path / "ray"), "sweep", mlflow_uri, "t", parent,
                       space={"lr": tune.grid_search([0.1, 1e12])})
    tracker.end_leftovers(parent)
    assert len(trials) == 2
    ok, bad = trials[trials.error.isna()], trials[trials.error.notna()]
    assert len(ok) == 1 and len(bad) == 1
    assert "TrainingDiverged" in bad.error.iloc[0] or "loss is" in bad.error.iloc[0]
    assert ok.objective.iloc[0] > 0
    children = tracker.children(parent)
    assert sorted(r.info.status for r in children) == ["FAILED", FINISHED]
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "loss is" in failed.data.tags["error"]
    good = next(r for r in children if r.info.status == FINISHED)
    for key in ("val_acc_super", "val_acc_base", "objective", "train_total"):
        assert _history(tracker, good.info.run_id, key) == list(range(1, params.tune.epochs + 1))
    assert RUNNING not in {r.info.status for r in children}


def test_parallel_grid_equals_in_process_grid(ray_cluster, tiny_params):
    """Ray tasks over stage-prefix subtrees give the same accuracies as one in-process prefix-shared pass."""
    from adaskip.data import load_splits, make_loader
    from adaskip.evaluation import evaluate_grid
    from adaskip.orchestration.grid import evaluate_parallel
    from adaskip.training import build_from_spec, model_spec

    torch.manual_seed(0)
    splits = load_splits(tiny_params.data)
    m = tiny_params.model
    spec = model_spec(m.name, splits.num_classes, m.split or [], m.skip_aware_norm, m.num_stages, m.kwargs)
    net = build_from_spec({**spec, "split": None})
    spec["split"] = net.split
    grid = evaluate_parallel({"spec": spec, "state_dict": net.state_dict()}, tiny_params)
    assert len(grid) == 2 ** net.num_stages
    assert set(grid.columns) >= {"skip", "macs", "params", "acc1", "acc5", "latency_ms", "pareto"}
    assert grid.pareto.dtype == bool and grid.pareto.any()
    by_skip = grid.set_index("skip")
    assert by_skip.macs["FFFF"] > by_skip.macs["TFFF"] > by_skip.macs["TTFF"] > by_skip.macs["TTTF"] > by_skip.macs["TTTT"]
    local = evaluate_grid(net.eval(), make_loader(splits.test, 128, shuffle=False, seed=0), progress=False).set_index("skip")
    pd.testing.assert_series_equal(by_skip.acc1.sort_index(), local.acc1.sort_index(), check_names=False, atol=1e-9)
