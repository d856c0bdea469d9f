"""The tracking server (adaskip.ops.tracking_server), for real: PostgreSQL, `mlflow server --serve-artifacts`, an MLflow
client over HTTP; on a non-loopback address (in a network namespace of its own) with basic auth over HTTPS (a
self-signed certificate), and plain HTTP refused there."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Optional

import pytest

from helpers import free_port
from trackserver import CREDS, MISSING, PASSWORD, USER, processes_of, server_env, start, stop, wait_ready


pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]


def assert_stopped(proc: subprocess.Popen, state: Path, log: Path) -> None:
    assert stop(proc, log) == 0, log.read_text()[-3000:]
    deadline = time.monotonic() + 10  # postgres' children leave right after the postmaster
    while processes_of(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_of(state)
    assert not (state / "pg" / "data" / "postmaster.pid").exists()


def test_loopback_server_tracks_and_proxies_artifacts(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.entities import RunStatus

    for name in CREDS:
        monkeypatch.delenv(name, raising=False)
    port, log = free_port(), tmp_path / "server.log"
    proc = start(state, "127.0.0.1", port, log, server_env(with_creds=False))
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_ready(proc, url, log) == f"MLFLOW_TRACKING_URI={url}"
        assert (state / "pg" / "data" / "PG_VERSION").exists()
        second = subprocess.run(
            [sys.executable, "-m", "adaskip.ops.tracking_server", "--state", str(state), "--port", str(free_port())],
            env=server_env(False),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2 and "another tracking server is running" in second.stderr, second.stderr

        client = mlflow.MlflowClient(tracking_uri=url)
        exp = client.create_experiment("server-test")
        run = client.create_run(exp).info
        for step, value in enumerate([0.5, 0.25]):
            client.log_metric(run.run_id, "loss", value, step=step)
        (tmp_path / "note.txt").write_text("through the server")
        client.log_artifact(run.run_id, str(tmp_path / "note.txt"))
        client.set_terminated(run.run_id)

        got = client.get_run(run.run_id)
        assert got.info.status == RunStatus.to_string(RunStatus.FINISHED)
        assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [0.5, 0.25]
        assert got.info.artifact_uri.startswith("mlflow-artifacts:")  # the client never sees the server's disk
        stored = state / "artifacts" / exp / run.run_id / "artifacts" / "note.txt"
        assert stored.read_text() == "through the server"
        back = client.download_artifacts(run.run_id, "note.txt", str(tmp_path / "back"))
        assert Path(back).read_text() == "through the server"
    finally:
        if proc.poll() is None:
            assert_stopped(proc, state, log)


def test_non_loopback_server_requires_credentials(state: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "adaskip.ops.tracking_server", "--state", str(state / "s"), "--host", "198.18.0.1"],
        env=server_env(with_creds=False),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a loopback address" in lines[0] and CREDS[1] in lines[0], done.stderr
    assert not (state / "s").exists()  # nothing was started


def test_non_loopback_server_without_tls_is_refused(state: Path) -> None:
    """Beyond loopback, basic auth over plain HTTP would send the password in clear: refused unless --insecure."""
    done = subprocess.run(
        [sys.executable, "-m", "adaskip.ops.tracking_server", "--state", str(state / "s"), "--host", "198.18.0.1"],
        env=server_env(with_creds=True),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --host 198.18.0.1 is not a loopback address: serve HTTPS"), done.stderr
    assert "--self-signed" in done.stderr and "--insecure" in done.stderr and PASSWORD not in done.stderr


def http_status(url: str, auth: Optional[tuple[str, str]] = None, context: Optional[ssl.SSLContext] = None) -> int:
    headers = {"Authorization": "Basic " + b64encode(":".join(auth).encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10, context=context) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except OSError:  # reset by the server
        pass
    return data


def test_non_loopback_server_authenticates(
    state: Path, tmp_path: Path, netns: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from adaskip.tracking import TrackingError, check_reachable

    ns, addr = netns
    port, log = free_port(), tmp_path / "server.log"
    proc = start(state, addr, port, log, server_env(with_creds=True), ("ip", "netns", "exec", ns), "--self-signed")
    try:
        url = f"https://{addr}:{port}"
        cert = state / "tls" / "server.crt"
        assert wait_ready(proc, url, log, context=ssl._create_unverified_context()) == f"MLFLOW_TRACKING_URI={url}"
        assert proc.stdout.readline().strip() == f"MLFLOW_TRACKING_SERVER_CERT_PATH={cert}"
        trusted = ssl.create_default_context(cafile=str(cert))
        ini = state / "auth" / "basic_auth.ini"
        assert ini.stat().st_mode & 0o777 == 0o600 and PASSWORD not in ini.read_text()
        assert (state / "tls" / "server.key").stat().st_mode & 0o777 == 0o600

        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        # a client without the certificate is refused before it sends anything
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            http_status(api, (USER, PASSWORD))
        monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH", raising=False)
        with pytest.raises(TrackingError, match="certificate does not verify.*MLFLOW_TRACKING_SERVER_CERT_PATH"):
            check_reachable(url)
        # plain HTTP to the HTTPS port: no HTTP answer, nothing of the store, the password not echoed
        with socket.create_connection((addr, port), timeout=10) as s:
            token = b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            s.sendall(
                f"GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: {addr}\r\n"
                f"Authorization: Basic {token}\r\n\r\n".encode()
            )
            answer = _read_all(s)
        assert not answer.startswith(b"HTTP/1.1 200") and b"experiments" not in answer
        assert PASSWORD.encode() not in answer and token.encode() not in answer

        assert http_status(api, context=trusted) == 401
        assert http_status(api, (USER, "wrong-password-5678"), context=trusted) == 401
        assert http_status(api, (USER, PASSWORD), context=trusted) == 200

        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))  # MLflow's client and adaskip's check
        check_reachable(url)
        monkeypatch.setenv(CREDS[0], USER)
        monkeypatch.setenv(CREDS[1], PASSWORD)
        client = mlflow.MlflowClient(tracking_uri=url)
        run = client.create_run(client.create_experiment("auth-test")).info
        client.log_metric(run.run_id, "acc", 0.9)
        (tmp_path / "a.txt").write_text("authenticated")
        client.log_artifact(run.run_id, str(tmp_path / "a.txt"))
        client.set_terminated(run.run_id)
        assert client.get_run(run.run_id).data.metrics == {"acc": 0.9}
        assert [f.path for f in client.list_artifacts(run.run_id)] == ["a.txt"]
    finally:
        if proc.poll() is None:
            assert_stopped(proc, state, log)
