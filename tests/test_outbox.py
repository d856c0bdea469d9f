"""MLflow records that never hold up training (adaskip.tracking.outbox), against the project's real tracking server
(PostgreSQL behind `mlflow server`, started as tests/test_tracking_server.py starts it) stopped and started again."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from adaskip.tracking import Tracker
from adaskip.tracking.outbox import Outbox
from helpers import free_port, wait_until
from trackserver import MISSING, server_env, start, stop, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]


@pytest.mark.extended
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

    tracker = Tracker(url, "outbox", "g")
    tracker.outbox._retry = (0.5, 2.0)
    assert stop(server, log) == 0  # the tracking server goes away
    t0 = time.monotonic()
    for step in (2, 3, 4):
        box.metrics(run, {"epoch": step, "acc": 10.0 * step}, step, once="epoch")
        time.sleep(0.01)
    # a run made while it is down (a study cell, a trial, an evaluate child): a placeholder id, written to by its
    # own process and by another (a Train worker's outbox), found once sent; reads say "unknown"
    cell = tracker.start_run("cell", {"variant": "x"}, parent_run_id=run)
    assert cell.startswith("pending-") and tracker.find_run({"variant": "x"}) is None
    tracker.log_params(cell, {"train": {"alpha": 0.5}})
    tracker.end_run(cell)
    worker = Outbox(url, retry=(0.5, 2.0), experiment="outbox")
    worker.metrics(cell, {"epoch": 1, "acc": 50.0}, 1, once="epoch")
    assert time.monotonic() - t0 < 5  # training does not wait (a health check of 3 s at most, once)
    assert box.drain(4) == 3  # nothing sent, nothing lost
    made = [r["time"] for r in box.pending()]
    assert len(made) == 3 and made[-1] < time.time() * 1000 - 3000

    server = start(state, "127.0.0.1", port, log, server_env(False))  # back, on the same state
    try:
        wait_ready(server, url, log)
        assert box.drain(90) == 0 and tracker.outbox.drain(60) == 0 and worker.drain(60) == 0
        cells = client.search_runs([tracker.experiment_id], "attributes.run_name = 'cell'")
        assert len(cells) == 1 and cells[0].info.status == "FINISHED" and cells[0].data.params["train.alpha"] == "0.5"
        assert cells[0].data.tags["mlflow.parentRunId"] == run and cells[0].data.metrics["acc"] == 50.0
        assert tracker.find_run({"variant": "x"}) == cells[0].info.run_id
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
    # one line each way per outbox (this test has three: the worker's, the Tracker's, the other worker's)
    assert sum("stopped answering" in m for m in lines) == 3 and sum("is back after" in m for m in lines) == 3, lines
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
    from adaskip.orchestration.reporting import TrackingTarget, unsent
    from adaskip.orchestration.train import run_training
    from helpers import checkpoint_recorded, latest_checkpoint, merge

    epochs, port, log = 12, free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = start(state, "127.0.0.1", port, log, server_env(False))
    wait_ready(server, url, log)
    client = MlflowClient(url)
    run = client.create_run(client.create_experiment("outage")).info.run_id
    storage, events = tmp_path / "ray", {}

    def outage() -> None:
        wait_until(lambda: checkpoint_recorded(storage, "train-x"), 600, "a checkpoint", every=0.2)
        assert stop(server, log) == 0
        events["down"] = time.time()
        time.sleep(8)
        worker = next(p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"]))
        before = latest_checkpoint(storage / "train-x")
        os.kill(worker.pid, signal.SIGKILL)
        events["killed"] = time.time()
        # back once the restarted group has trained and checkpointed an epoch without it (not after a fixed time: a
        # run that ends while the server is down leaves its records for the next stage, another test's subject)
        wait_until(lambda: latest_checkpoint(storage / "train-x") not in (None, before), 300, "a newer checkpoint")
        events["server"] = start(state, "127.0.0.1", port, log, server_env(False))
        events["up"] = time.time()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    params = Params.model_validate(merge(tiny_raw, {"data": {"image_size": 32}}))
    try:
        metrics, state = run_training(
            params, Storage(str(storage)), "train-x", TrackingTarget(url, "outage", run), epochs=epochs
        )
        thread.join(timeout=120)
        assert {"down", "killed", "up"} <= set(events) and metrics["epoch"] == epochs
        # what the workers had not sent when training ended (their sender waits up to 30 s between tries) is in
        # the last checkpoint: the stage's Tracker sends it, as pipelines/train.py does
        tracker = Tracker(url, "outage")
        tracker.hand_on(unsent(state))
        assert tracker.close(Storage(str(storage)), wait=120) == 0
        history = client.get_metric_history(run, "val_acc_super")
        assert [m.step for m in history] == list(range(1, epochs + 1))  # each epoch once, in order
        stamps = [m.timestamp / 1000 for m in history]
        assert stamps == sorted(stamps) and any(events["down"] < t < events["up"] for t in stamps)
    finally:
        if "server" in events:
            stop(events["server"], log)


@pytest.mark.parametrize("sender", ["adaskip sync", pytest.param("evaluate", marks=pytest.mark.extended)])
def test_a_stage_that_ends_during_an_outage_leaves_its_records(sender, state, tmp_path):  # noqa: F811
    """The tracking server stops after the train stage's first checkpoint and stays down past its end: train goes
    on, writes its outputs, says how many records wait and that the registration is pending (train_metrics.json
    too), exit 0, no traceback, no retry warnings. The server back, ``adaskip sync`` or the next stage (evaluate, as
    it starts) sends them: the train run has every epoch once, stamped when trained, and is FINISHED; the model is
    registered from it (and evaluate finds that version)."""
    import os
    import subprocess
    import sys
    import threading

    from mlflow.tracking import MlflowClient

    from helpers import TINY, checkpoint_recorded, merge, new_project, sh

    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = start(state, "127.0.0.1", port, log, server_env(False))
    wait_ready(server, url, log)
    epochs = 4
    overrides = {"train": {"epochs": epochs, "workers": 1}, "tune": {"enabled": False}, "mlflow": {"tracking_uri": url}}
    repo = new_project(tmp_path / "p", merge(TINY, overrides))
    sh(repo, sys.executable, "pipelines/prepare.py")
    sh(repo, sys.executable, "pipelines/tune.py")  # tune.enabled false: params.yaml's values for train
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"ADASKIP_TRACKING_WAIT_S": "5"}
    train = subprocess.Popen(
        [sys.executable, "pipelines/train.py"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    events = {}

    def outage() -> None:
        wait_until(
            lambda: checkpoint_recorded(repo / ".ray_results", "train-*"),
            600,
            "a checkpoint",
            alive=lambda: train.poll() is None,
            every=0.1,
        )
        stop(server, log)
        events["down"] = time.time() * 1000

    down = threading.Thread(target=outage, daemon=True)
    down.start()
    out = train.communicate(timeout=600)[0].decode()
    down.join(60)
    assert train.returncode == 0 and "Traceback" not in out and "Retrying" not in out, out[-4000:]
    assert (repo / "models/model.pt").is_file() and (repo / "results/diagnostics.json").is_file()
    written = json.loads((repo / "results/train_metrics.json").read_text())
    assert written["registration"].startswith("pending") and "registered_model_version" not in written
    waiting = [line for line in out.splitlines() if "MLflow record(s) wait" in line]
    assert len(waiting) == 1 and "adaskip sync" in waiting[0], out[-3000:]
    assert "registration of adaskip pending" in out.splitlines()[-1], out[-1000:]
    assert list((repo / ".ray_results" / "pending").iterdir())

    server = start(state, "127.0.0.1", port, log, server_env(False))  # back, on the same state
    try:
        wait_ready(server, url, log)
        if sender == "evaluate":
            r = sh(repo, sys.executable, "pipelines/evaluate.py")
            assert "kept by earlier stages sent" in r.stdout + r.stderr
        else:
            assert "record(s) sent" in sh(repo, "adaskip", "sync").stdout
        assert not list((repo / ".ray_results" / "pending").iterdir())
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("adaskip")
        (run,) = client.search_runs([exp.experiment_id], "tags.`adaskip.stage` = 'train'")
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_acc_super")
        assert [m.step for m in history] == list(range(1, epochs + 1))  # each epoch once, in order
        assert any(m.timestamp > events["down"] for m in history)  # trained while down, stamped then, sent later
        assert max(m.timestamp for m in history) < run.info.end_time
        (version,) = [v for v in client.search_model_versions("name = 'adaskip'") if "adaskip.skip" not in v.tags]
        assert version.run_id == run.info.run_id
        assert sender != "evaluate" or "adaskip.evaluate_run" in version.tags
    finally:
        stop(server, log)


@pytest.mark.extended
def test_a_long_train_stage_barely_notices_a_five_minute_outage(state, tmp_path):  # noqa: F811
    """The train stage at params.yaml's model for at least 10 minutes (A), then the same run with the tracking server
    down for 5 minutes from a third of A's time (B), paired in one test: B's wall time is at most 1.15x A's; every
    epoch of B is in MLflow once, in order, stamped when trained; B's model is registered; exit 0, no traceback.
    ``ADASKIP_LONG_EPOCHS`` (default 230, about 11 minutes on 2 cores) sizes it to another machine."""
    import os
    import subprocess
    import sys
    import threading

    from mlflow.tracking import MlflowClient

    from helpers import new_project, sh

    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    server = {"proc": start(state, "127.0.0.1", port, log, server_env(False))}
    wait_ready(server["proc"], url, log)
    epochs, outage = int(os.environ.get("ADASKIP_LONG_EPOCHS", 230)), 300.0
    repo = new_project(
        tmp_path / "p", {"train": {"epochs": epochs}, "tune": {"enabled": False}, "mlflow": {"tracking_uri": url}}
    )
    sh(repo, sys.executable, "pipelines/prepare.py")
    sh(repo, sys.executable, "pipelines/tune.py")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

    def train() -> tuple[float, str]:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "pipelines/train.py"], cwd=repo, env=env, capture_output=True, text=True)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "Traceback" not in out and "Retrying" not in out, out[-4000:]
        return time.monotonic() - t0, out

    events: dict[str, float] = {}

    def cut(after: float) -> None:
        time.sleep(after)
        stop(server["proc"], log)
        events["down"] = time.time() * 1000
        time.sleep(outage)
        server["proc"] = start(state, "127.0.0.1", port, log, server_env(False))
        wait_ready(server["proc"], url, log)
        events["up"] = time.time() * 1000

    try:
        a, _ = train()
        assert a >= 600, f"A took {a:.0f} s: raise ADASKIP_LONG_EPOCHS ({epochs}) for a run of 10 minutes or more"
        thread = threading.Thread(target=cut, args=(a / 3,), daemon=True)
        thread.start()
        b, out = train()
        thread.join(timeout=outage + 120)
        print(f"\ntrain stage, {epochs} epochs: server up (A) {a:.1f} s | {outage:.0f} s outage (B) {b:.1f} s | "
              f"B/A {b / a:.3f}")  # fmt: skip
        assert {"down", "up"} <= set(events) and "stopped answering" in out and "is back after" in out
        assert b <= 1.15 * a, f"B {b:.0f} s > 1.15 x A {a:.0f} s"
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("adaskip")
        runs = client.search_runs([exp.experiment_id], "tags.`adaskip.stage` = 'train'", order_by=["start_time DESC"])
        run = runs[0]
        assert len(runs) == 2 and run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_acc_super")
        assert [m.step for m in history] == list(range(1, epochs + 1))  # each epoch once, in order
        stamps = [m.timestamp for m in history]
        assert stamps == sorted(stamps) and sum(events["down"] < t < events["up"] for t in stamps) > 10
        versions = client.search_model_versions("name = 'adaskip'")
        assert run.info.run_id in {v.run_id for v in versions}  # B's model registered
    finally:
        stop(server["proc"], log)
