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

from adaskip.build import build_model
from adaskip.orchestration.storage import Storage
from adaskip.tracking import FINISHED, RUNNING, Tracker
from helpers import checkpoint_recorded, merge

pytestmark = [pytest.mark.ray, pytest.mark.extended]
EPOCHS = 6


def _history(tracker: Tracker, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in tracker.client.get_metric_history(run_id, key))


def _kill_a_worker_after_a_checkpoint(run_dir: Path, killed: list[int], timeout: float = 400) -> None:
    """SIGKILL one Ray Train worker process once the run has a recorded checkpoint (a real, abrupt failure)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if checkpoint_recorded(run_dir.parent, run_dir.name):
            for p in psutil.process_iter(["cmdline"]):
                if any("RayTrainWorker" in part for part in p.info["cmdline"] or []):
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                    return
        time.sleep(0.1)


@pytest.mark.ddp
def test_train_ddp_worker_failure_resumes(ray_cluster, tiny_raw, mlflow_uri, tmp_path):
    """2-worker DDP run; a worker SIGKILLed mid-run makes Ray Train restart the group from a checkpoint
    (not from scratch); the run finishes with all epochs, in one MLflow run."""
    from adaskip.config import Params
    from adaskip.orchestration.reporting import TrackingTarget
    from adaskip.orchestration.train import run_training

    params = Params.model_validate(merge(tiny_raw, {"data": {"image_size": 32}}))  # ~1 s/epoch: killed mid-run
    tracker = Tracker(mlflow_uri, "t")
    run_id = tracker.start_run("train")
    storage = tmp_path / "ray"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_a_checkpoint, args=(storage / "train-x", killed), daemon=True)
    killer.start()
    metrics, state = run_training(
        params, Storage(str(storage)), "train-x", TrackingTarget(mlflow_uri, "t", run_id), epochs=EPOCHS
    )
    killer.join(timeout=1)
    assert killed, "no worker was killed"
    assert (
        metrics["epoch"] == EPOCHS
        and state["epoch"] == EPOCHS - 1
        and set(state) >= {"model", "optimizer", "spec", "macs"}
    )
    assert metrics["val_acc_super"] > 25 and metrics["val_acc_base"] > 25  # 10 classes: chance is 10 %
    # rank 0 only (not once per worker), and each epoch once: an epoch the killed group had logged but not
    # checkpointed is trained again by the restarted group, which does not log it again
    steps = _history(tracker, run_id, "val_acc_super")
    assert steps == list(range(1, EPOCHS + 1)), steps
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
    trials = run_sweep(
        params,
        Storage(str(tmp_path / "ray")),
        "sweep",
        mlflow_uri,
        "t",
        parent,
        space={"lr": tune.grid_search([0.1, 1e12])},
    )
    tracker.end_leftovers(parent)
    assert len(trials) == 2
    ok, bad = trials[trials.error.isna()], trials[trials.error.notna()]
    assert len(ok) == 1 and len(bad) == 1
    assert bad.error.iloc[0].startswith("TrainingDiverged: loss is"), bad.error.iloc[0]
    assert ok.objective.iloc[0] > 0
    children = tracker.children(parent)
    assert sorted(r.info.status for r in children) == ["FAILED", FINISHED]
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "loss is" in failed.data.tags["error"]
    good = next(r for r in children if r.info.status == FINISHED)
    for key in ("val_acc_super", "val_acc_base", "objective", "train_total"):
        assert _history(tracker, good.info.run_id, key) == list(range(1, params.tune.epochs + 1))
    assert RUNNING not in {r.info.status for r in children}


def test_parallel_grid_equals_in_process_grid(ray_cluster, tiny_params, tmp_path):
    """Ray tasks over stage-prefix subtrees give the same accuracies as one in-process prefix-shared pass; each
    finished subtree is saved, and a re-run (as after an interruption) evaluates only the missing ones."""
    from adaskip.data import load_subsets, make_loader
    from adaskip.evaluation import evaluate_grid
    from adaskip.orchestration.grid import evaluate_parallel

    torch.manual_seed(0)
    subsets = load_subsets(tiny_params.data)
    net = build_model(tiny_params, num_classes=subsets.num_classes)
    grid = evaluate_parallel({"spec": net.spec, "state_dict": net.state_dict()}, tiny_params, Storage(str(tmp_path)))
    assert len(grid) == 2**net.num_stages
    assert set(grid.columns) >= {"skip", "macs", "params", "acc1", "acc5", "latency_ms", "pareto"}
    assert grid.pareto.dtype == bool and grid.pareto.any()
    by_skip = grid.set_index("skip")
    assert (
        by_skip.macs["FFFF"] > by_skip.macs["TFFF"] > by_skip.macs["TTFF"] > by_skip.macs["TTTF"] > by_skip.macs["TTTT"]
    )
    local = evaluate_grid(net.eval(), make_loader(subsets.test, 128, shuffle=False, seed=0), progress=False).set_index(
        "skip"
    )
    pd.testing.assert_series_equal(by_skip.acc1.sort_index(), local.acc1.sort_index(), check_names=False, atol=1e-9)

    saved = sorted(tmp_path.glob("*.csv"))
    assert [f.stem for f in saved] == ["F", "T"]  # parallelism 2: one subtree per first-stage flag
    kept = pd.read_csv(saved[0], dtype={"skip": str}).assign(acc1=-1.0)  # a marker only a reused file can carry
    kept.to_csv(saved[0], index=False)
    saved[1].unlink()  # this subtree was still running when the stage was interrupted
    again = evaluate_parallel(
        {"spec": net.spec, "state_dict": net.state_dict()}, tiny_params, Storage(str(tmp_path))
    ).set_index("skip")
    assert (again.acc1[kept.skip] == -1.0).all()  # reused, not evaluated again
    redone = again.index.difference(kept.skip)
    assert len(redone) == 2 ** (net.num_stages - 1) and saved[1].exists()
    pd.testing.assert_series_equal(again.acc1[redone], by_skip.acc1[redone])
