"""The project's tracking server (adaskip.ops.tracking_server) as tests start, await and stop it: on loopback, or in a
network namespace with basic auth and a self-signed certificate."""

from __future__ import annotations

import os
import select
import signal
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Optional

import pytest

from adaskip.ops.tracking_server import ServerError, pg_bindir
from helpers import wait_until

USER, PASSWORD = "adaskip-admin", "test-only-password-1234"  # MLflow wants 12+ characters
CREDS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _postgres_missing() -> Optional[str]:
    try:
        pg_bindir(Path("/nonexistent"))
        return None
    except ServerError as e:
        return str(e)


MISSING = _postgres_missing()


def server_env(with_creds: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CREDS and k != "MLFLOW_TRACKING_URI"}
    return {**env, CREDS[0]: USER, CREDS[1]: PASSWORD} if with_creds else env


def start(
    state: Path, host: str, port: int, log: Path, env: dict[str, str], prefix: tuple[str, ...] = (), *args: str
) -> subprocess.Popen:
    cmd = [
        *prefix,
        sys.executable,
        "-m",
        "adaskip.ops.tracking_server",
        "--state",
        str(state),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        *args,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)


def wait_ready(
    proc: subprocess.Popen, url: str, log: Path, timeout: float = 90, context: Optional[ssl.SSLContext] = None
) -> str:
    """Wait for /health, then return the server's ready line."""

    def health() -> bool:
        urllib.request.urlopen(f"{url}/health", timeout=2, context=context).close()
        return True

    try:
        wait_until(health, timeout, "the tracking server's /health", lambda: proc.poll() is None)
    except RuntimeError as e:
        pytest.fail(f"{e}:\n{log.read_text()[-3000:]}")
    assert select.select([proc.stdout], [], [], 30)[0], "no ready line"
    return proc.stdout.readline().strip()


def stop(proc: subprocess.Popen, log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"server ignored SIGTERM:\n{log.read_text()[-3000:]}")


def processes_of(state: Path) -> list[str]:
    """Command lines that name the state folder (postmaster -D STATE/pg/data, mlflow's backend URI)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state) in text:
            found.append(text)
    return found
