"""Shared fixtures: one local Ray cluster per session, a fresh SQLite MLflow store per test, tiny params."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

# adaskip's Ray env defaults (token auth, no usage stats, ...) before anything imports ray: Ray reads some of them
# once, at its first use in a process, and `ray start` heads and stage subprocesses inherit them from here.
from adaskip.orchestration.cluster import configure_ray_env  # noqa: E402

configure_ray_env()
from helpers import BUCKET, ROOT, TINY, free_port, merge, wait_until  # noqa: E402  (what tests share that is not a fixture)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a module of tiny models: as fast, and no OpenMP spin-waiting that costs seconds
    per step on a busy 2-core machine (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_raw() -> dict[str, Any]:
    """The shipped params.yaml with TINY applied (a plain dict: tests tweak it further)."""
    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)


@pytest.fixture
def tiny_params(tiny_raw):
    from adaskip.config import Params

    return Params.model_validate(tiny_raw)


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A real, empty SQLite tracking store for this test (absolute: Ray workers have another cwd)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A 2-CPU local Ray cluster for the whole session, in a short temp dir (AF_UNIX path limit)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=300 * 2**20,
        _temp_dir=tmp,
        configure_logging=False,
        log_to_driver=True,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3-compatible server on 127.0.0.1 with one bucket; yields the AWS environment a client needs."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(endpoint, timeout=1), 30, "moto_server", lambda: proc.poll() is None)
    except RuntimeError as e:
        proc.kill()
        pytest.fail(str(e))
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    return s3_server


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    """A network namespace with a veth pair to this one: (namespace, the namespace's address). The address is
    outside the private ranges MLflow allows by default, so reaching it also tests the module's --allowed-hosts."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    used = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    net = next(f"198.18.{n}" for n in random.sample(range(1, 255), 254) if f"198.18.{n}." not in used)
    ns, host_if, ns_if = f"adaskip-ts{os.getpid()}", f"as{os.getpid() % 100000}h", f"as{os.getpid() % 100000}n"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns],
        ["ip", "addr", "add", f"{net}.2/24", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.1/24", "dev", ns_if],
        ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot set up a network namespace ({' '.join(step)}: {done.stderr.strip()})")
        yield ns, f"{net}.1"
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)  # also removes the peer
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def state() -> Iterator[Path]:
    """A state folder straight under /tmp: the module opens it to the postgres user itself, but cannot open
    pytest's tmp_path root (mode 0700, root's)."""
    path = Path(tempfile.mkdtemp(prefix="adaskip-mlflow-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
