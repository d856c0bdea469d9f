"""One storage setting for everything Ray persists: a local or shared path, or an S3 URI (a real S3 API server)."""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

from adaskip.config import ConfigError, parse_params
from adaskip.orchestration.storage import Storage

BUCKET = "adaskip-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3-compatible server on 127.0.0.1 with one bucket; yields the AWS environment a client needs."""
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1"}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
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


def _roundtrip(store: Storage) -> None:
    table = pd.DataFrame({"skip": ["FFFF", "TTTT"], "acc1": [91.5, 84.0]})
    cache = store.child("evaluate-x")
    assert not cache.exists("F.csv")
    cache.write_csv("F.csv", table)
    again = pickle.loads(pickle.dumps(cache))  # as a Ray task on another node gets it
    assert again.exists("F.csv") and again == cache
    pd.testing.assert_frame_equal(again.read_csv("F.csv"), table)  # skip strings stay strings
    cache.remove()
    assert not cache.exists("F.csv") and not cache.exists()
    cache.remove()  # nothing there: no error


def test_local_path_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("ADASKIP_STORAGE", raising=False)
    assert Storage.resolve(None, tmp_path).uri == str(tmp_path / ".ray_results")
    assert Storage.resolve("shared/ray", tmp_path).uri == str(tmp_path / "shared/ray")
    monkeypatch.setenv("ADASKIP_STORAGE", str(tmp_path / "nfs"))
    store = Storage.resolve("ignored", tmp_path)
    assert store.uri == str(tmp_path / "nfs") and store.is_local_path
    _roundtrip(store)
    assert not list((tmp_path / "nfs").rglob("*.tmp"))  # written beside, then renamed


def test_bad_storage_scheme_is_named():
    with pytest.raises(ConfigError, match=r"cluster\.storage.*unsupported scheme 'ftp'"):
        parse_params({"cluster": {"storage": "ftp://host/x"}})
    with pytest.raises(ConfigError, match=r"cluster\.stroage: unknown key"):
        parse_params({"cluster": {"stroage": "/x"}})


@pytest.mark.subprocess
def test_s3_storage_through_an_s3_api_server(s3_env):
    store = Storage.resolve(f"s3://{BUCKET}/runs", "/nonexistent")
    assert store.uri == f"s3://{BUCKET}/runs" and not store.is_local_path and store.path == f"{BUCKET}/runs"
    _roundtrip(store)


@pytest.mark.subprocess
@pytest.mark.ray
def test_train_checkpoints_go_to_s3(ray_cluster, tiny_raw, s3_env, tmp_path):
    """A Ray Train run with s3:// storage: its checkpoints are objects in the bucket and the driver reads the final
    state through Ray's Checkpoint API; nothing lands in a local folder."""
    import boto3

    from adaskip.config import Params
    from conftest import merge
    from adaskip.orchestration.train import run_training

    os.chdir(tmp_path)
    params = Params.model_validate(merge(tiny_raw, {"train": {"workers": 1, "epochs": 2}}))
    store = Storage.resolve(f"s3://{BUCKET}/ray", tmp_path)
    metrics, state = run_training(params, store, "train-s3")
    assert metrics["epoch"] == 2 and state["epoch"] == 1 and "model" in state
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_objects_v2(
        Bucket=BUCKET, Prefix="ray/train-s3/")["Contents"]]
    assert any(k.endswith("/state.pt") and "/checkpoint_" in k for k in keys), keys
    assert not list(tmp_path.rglob("state.pt"))
    store.remove("train-s3")
    assert not store.exists("train-s3")
