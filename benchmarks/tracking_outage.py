"""Benchmark: what a tracking-server outage costs a Ray Train run, against the same run with the server up.

The project's tracking server (``python -m adaskip.ops.tracking_server``: PostgreSQL behind ``mlflow server``) runs on
loopback. The same training (params.yaml's model and data, ``--epochs``, one Ray Train run per side, each in its own
MLflow run) is timed twice, alternating the order over ``--reps``:
  (A) with the server up throughout;
  (B) with the server stopped (SIGTERM) once ``--start`` of (A)'s time has passed, for ``--outage`` seconds, then
      started again on the same state.
It prints both wall times, B/A, and checks that B's run holds every epoch once, in order, stamped when trained.

Example: python benchmarks/tracking_outage.py --epochs 60 --outage 90 --start 0.33
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # its test helpers: free_port

from adaskip.orchestration.cluster import configure_ray_env  # noqa: E402

configure_ray_env()
import ray  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from adaskip.config import load_params  # noqa: E402
from adaskip.orchestration.storage import Storage  # noqa: E402
from adaskip.orchestration.reporting import TrackingTarget  # noqa: E402
from adaskip.orchestration.train import run_training  # noqa: E402
from helpers import free_port  # noqa: E402


class Server:
    """The project's tracking server on 127.0.0.1:port over one state folder (stopped and started again)."""

    def __init__(self, state: Path, port: int) -> None:
        self.state, self.port, self.proc = state, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "adaskip.ops.tracking_server", "--state", str(self.state), "--host", "127.0.0.1"]
        log = (self.state.parent / "server.log").open("a")
        self.proc = subprocess.Popen([*cmd, "--port", str(self.port), "--workers", "1"], stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the tracking server did not start: see server.log")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def train(params, server: Server, name: str, epochs: int, root: Path, outage: float = 0, start: float = 0):
    """One timed Ray Train run logging to ``server``; with ``outage``, the server is down from ``start`` s for
    ``outage`` s. Returns (wall seconds, run id, (down, up) times)."""
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("outage") or client.get_experiment(client.create_experiment("outage"))
    run = client.create_run(exp.experiment_id, run_name=name).info.run_id
    events: dict[str, float] = {}

    def cut() -> None:
        time.sleep(start)
        server.stop()
        events["down"] = time.time()
        time.sleep(outage)
        server.start()
        events["up"] = time.time()

    thread = threading.Thread(target=cut, daemon=True)
    t0 = time.perf_counter()
    if outage:
        thread.start()
    run_training(params, Storage(str(root / name)), name, TrackingTarget(server.url, "outage", run), epochs=epochs)
    wall = time.perf_counter() - t0
    if outage:
        thread.join()
    client.set_terminated(run)
    return wall, run, (events.get("down"), events.get("up"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--outage", type=float, default=90, help="seconds the server is down (default %(default)s)")
    ap.add_argument("--start", type=float, default=0.33, help="when, as a share of the run without outage")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml").settled()
    root = Path(tempfile.mkdtemp(prefix="outage-", dir="/tmp"))  # /tmp: the server's postgres user can open it
    os.chmod(root, 0o755)
    server = Server(root / "state", free_port())
    # the workers' output stays in Ray's logs: thousands of report lines would slow the side that prints them
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False)
    server.start()
    try:
        walls: dict[str, list[float]] = {"A": [], "B": []}
        base = None
        for rep in range(args.reps):
            for side in "AB" if rep % 2 == 0 else "BA":  # A first: B places its outage by A's time
                if side == "A":
                    wall, _, _ = train(params, server, f"a{rep}", args.epochs, root)
                    base = base or wall
                else:
                    wall, run, (down, up) = train(
                        params, server, f"b{rep}", args.epochs, root, args.outage, args.start * base
                    )
                    history = MlflowClient(server.url).get_metric_history(run, "val_acc_super")
                    steps = [m.step for m in history]
                    during = sum(down < m.timestamp / 1000 < up for m in history)
                    ok = steps == list(range(1, args.epochs + 1))
                    print(f"B{rep}: {len(steps)} epochs logged once, in order: {ok}; {during} trained while down")
                walls[side].append(wall)
                print(f"{side}{rep}: {wall:.1f} s", flush=True)
        a, b = (sum(walls[k]) / len(walls[k]) for k in "AB")
        print(f"\nserver up (A) {a:.1f} s | {args.outage:.0f} s outage (B) {b:.1f} s | B/A {b / a:.3f}")
    finally:
        server.stop()
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
