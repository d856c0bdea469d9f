"""MLflow records that never hold up training (adaskip.tracking.outbox), against the project's real tracking server
(PostgreSQL behind `mlflow server`, started as tests/test_tracking_server.py starts it) stopped and started again."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from adaskip.tracking.outbox import Outbox
from helpers import free_port
from test_tracking_server import MISSING, server_env, start, state, stop, wait_ready  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]


def test_records_wait_for_a_server_that_went_away(state: Path, tmp_path: Path, caplog):  # noqa: F811
    """The server stops: putting records never waits, nothing is sent or lost; it starts again on the same state:
    every record arrives once, in order, with the time it was made; one line when it stopped answering and one when
    it was back, no urllib3 retry warnings. A restarted worker group's outbox (the checkpoint's pending records, an
    epoch trained again) logs no epoch twice."""
    from mlflow.tracking import MlflowClient

    caplog.set_level(logging.INFO)
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = start(state, "127.0.0.1", port, log, server_env(False))
    wait_ready(server, url, log)
    client = MlflowClient(url)
    run = client.create_run(client.create_experiment("outbox")).info.run_id
    box = Outbox(url, retry=(0.5, 2.0))
    box.metrics(run, {"epoch": 1, "acc": 10.0}, 1, once="epoch")
    assert box.drain(60) == 0

    assert stop(server, log) == 0  # the tracking server goes away
    t0 = time.monotonic()
    for step in (2, 3, 4):
        box.metrics(run, {"epoch": step, "acc": 10.0 * step}, step, once="epoch")
        time.sleep(0.01)
    assert time.monotonic() - t0 < 0.5  # training does not wait
    assert box.drain(4) == 3  # nothing sent, nothing lost
    made = [r["time"] for r in box.pending()]
    assert len(made) == 3 and made[-1] < time.time() * 1000 - 3000

    server = start(state, "127.0.0.1", port, log, server_env(False))  # back, on the same state
    try:
        wait_ready(server, url, log)
        assert box.drain(90) == 0
        # a restarted group: its checkpoint's records (sent after that checkpoint: silent duplicates) and an epoch
        # it trains again (logged before: skipped, and the run says so)
        resent = [{"kind": "metrics", "run": run, "metrics": {"epoch": 2.0, "acc": 99.0}, "step": 2,
                   "time": int(time.time() * 1000), "once": "epoch"}]  # fmt: skip
        again = Outbox(url, resent)
        again.metrics(run, {"epoch": 3, "acc": 99.0}, 3, once="epoch")
        assert again.drain(60) == 0
        history = client.get_metric_history(run, "acc")
        assert [(m.step, m.value) for m in history] == [(1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0)]
        assert [m.timestamp for m in history][1:] == made  # when made, not when sent
        assert client.get_run(run).data.tags["adaskip.retrained_epoch"] == "3"
    finally:
        stop(server, log)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("stopped answering" in m for m in lines) == 1 and sum("is back after" in m for m in lines) == 1, lines
    assert not any("Retrying" in m for m in lines), lines
    again_lines = [m for m in lines if "trained again" in m]
    assert again_lines == ["epoch 3 trained again after a restart; its metrics were logged before"], again_lines


@pytest.mark.extended
@pytest.mark.ray
@pytest.mark.ddp
def test_training_goes_on_while_the_server_is_down(ray_cluster, tiny_raw, state, tmp_path):  # noqa: F811
    """A 2-worker Ray Train run whose tracking server stops after the first checkpoint, then loses a worker while the
    server is down (the group restarts without it), then the server comes back: the run finishes, and every epoch is
    in MLflow once, in order, stamped when it was trained."""
    import os
    import signal
    import threading

    import psutil
    from mlflow.tracking import MlflowClient

    from adaskip.config import Params
    from adaskip.orchestration.storage import Storage
    from adaskip.orchestration.train import TrackingTarget, run_training
    from helpers import checkpoint_recorded, merge

    epochs, port, log = 12, free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = start(state, "127.0.0.1", port, log, server_env(False))
    wait_ready(server, url, log)
    client = MlflowClient(url)
    run = client.create_run(client.create_experiment("outage")).info.run_id
    storage, events = tmp_path / "ray", {}

    def outage() -> None:
        while not checkpoint_recorded(storage, "train-x"):
            time.sleep(0.2)
        assert stop(server, log) == 0
        events["down"] = time.time()
        time.sleep(8)
        worker = next(p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"]))
        os.kill(worker.pid, signal.SIGKILL)
        events["killed"] = time.time()
        time.sleep(15)
        events["server"] = start(state, "127.0.0.1", port, log, server_env(False))
        events["up"] = time.time()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    params = Params.model_validate(merge(tiny_raw, {"data": {"image_size": 32}}))
    try:
        metrics, _ = run_training(
            params, Storage(str(storage)), "train-x", TrackingTarget(url, "outage", run), epochs=epochs
        )
        thread.join(timeout=120)
        assert {"down", "killed", "up"} <= set(events) and metrics["epoch"] == epochs
        history = client.get_metric_history(run, "val_acc_super")
        assert [m.step for m in history] == list(range(1, epochs + 1))  # each epoch once, in order
        stamps = [m.timestamp / 1000 for m in history]
        assert stamps == sorted(stamps) and any(events["down"] < t < events["up"] for t in stamps)
    finally:
        if "server" in events:
            stop(events["server"], log)
