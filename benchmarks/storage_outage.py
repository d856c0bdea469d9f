"""Measurement: what an outage of the S3 store costs a Ray Train run that checkpoints to it.

moto's S3 server runs on loopback with one bucket (``ADASKIP_STORAGE``-style ``s3://`` storage, keys in the
environment only). The same training (params.yaml's model and data, ``--epochs``) runs twice:
  (A) with the store up throughout;
  (B) with the store frozen (SIGSTOP: moto keeps its objects in memory, so stopping it would empty the bucket) once
      ``--start`` of (A)'s time has passed, for ``--outage`` seconds, then resumed (SIGCONT).
It prints both wall times, B/A, how B ended (finished, or the error it raised; the final checkpoint is read back)
and the checkpoints B left in the bucket.

Measured on the 2-core development machine (30 epochs of params.yaml's model on digits, 120 s outage at a third):
  before (SYNC upload, Ray Train's default): B failed (RecurringTrainingError: the restarted group could not read
    its checkpoint); then, with a restarted group waiting for the storage, B finished but trained nothing while
    the store was down: A 118.7 s, B 242.3 s, B/A 2.04.
  after (ASYNC upload, retried while the store does not answer): see the closing note of issue 31.

Example: python benchmarks/storage_outage.py --epochs 30 --outage 120 --start 0.33
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # its test helpers: free_port

from adaskip.orchestration.cluster import configure_ray_env  # noqa: E402

configure_ray_env()
import ray  # noqa: E402

from adaskip.config import load_params  # noqa: E402
from adaskip.orchestration.storage import Storage  # noqa: E402
from adaskip.orchestration.train import run_training  # noqa: E402

BUCKET = "adaskip-outage"


def moto(port: int) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(150):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto_server did not start")


def train(params, name: str, epochs: int, proc: subprocess.Popen, outage: float = 0, start: float = 0):
    events: dict[str, float] = {}

    def freeze() -> None:
        time.sleep(start)
        proc.send_signal(signal.SIGSTOP)
        events["down"] = time.time()
        time.sleep(outage)
        proc.send_signal(signal.SIGCONT)
        events["up"] = time.time()

    thread = threading.Thread(target=freeze, daemon=True)
    if outage:
        thread.start()
    t0, ended = time.perf_counter(), "finished"
    try:
        run_training(params, Storage(f"s3://{BUCKET}/{name}"), name, epochs=epochs)
    except Exception as e:  # noqa: BLE001  (what the run raised is the finding)
        ended = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    wall = time.perf_counter() - t0
    if outage:
        thread.join()
    return wall, ended


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--outage", type=float, default=120, help="seconds the store is frozen (default %(default)s)")
    ap.add_argument("--start", type=float, default=0.33, help="when, as a share of the run without outage")
    args = ap.parse_args()
    from helpers import free_port

    port = free_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
    )
    proc = moto(port)
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml").settled()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        a, ended_a = train(params, "a", args.epochs, proc)
        print(f"A (store up): {a:.1f} s, {ended_a}", flush=True)
        b, ended_b = train(params, "b", args.epochs, proc, args.outage, args.start * a)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="b/").get("Contents", [])]
        checkpoints = sorted({k.split("/")[2] for k in keys if "/checkpoint_" in k})
        print(f"B ({args.outage:.0f} s outage from {args.start * a:.0f} s): {b:.1f} s, {ended_b}")
        print(f"B left {len(checkpoints)} checkpoint folder(s) in the bucket; B/A {b / a:.3f}")
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        ray.shutdown()


if __name__ == "__main__":
    main()
