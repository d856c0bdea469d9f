"""`mlflow models serve` of a registered adaskip model on this machine's loopback, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def local_server(tracking_uri: str, model_uri: str, log_file: Path, workers: int = 1) -> Iterator[str]:
    """`mlflow models serve` of ``model_uri`` on a free loopback port, one torch thread per worker; yields the
    invocations URL once /ping answers, and stops the server after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bindir = str(Path(sys.executable).parent)  # the server runs `uvicorn` from PATH: this environment's
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "OMP_NUM_THREADS": "1",
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
    }
    log = open(log_file, "wb")
    server = subprocess.Popen(
        [
            str(Path(bindir) / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-w",
            str(workers),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while True:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start:\n{log_file.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):  # noqa: S310 (loopback)
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()
