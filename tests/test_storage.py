"""One storage setting for everything Ray persists: a local or shared path, or an S3 URI (a real S3 API server)."""

from __future__ import annotations

import os
import pickle

import pandas as pd
import pytest

from adaskip.config import ConfigError, parse_params
from adaskip.orchestration.storage import Storage, StorageError
from helpers import BUCKET, PROGRAMS


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
    # the keys come from each process's own environment: never in its pickle (Ray's and Tune's state hold them)
    assert s3_env["AWS_SECRET_ACCESS_KEY"].encode() not in pickle.dumps(store) + pickle.dumps(store.filesystem)


def test_credentials_in_a_storage_uri_are_refused(monkeypatch):
    monkeypatch.setenv("ADASKIP_STORAGE", "s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/runs")
    with pytest.raises(StorageError) as e:
        Storage.resolve(None, "/x")
    assert "s3://***@bucket/runs carries a credential" in str(e.value) and "wJalr" not in str(e.value)
    monkeypatch.setenv("ADASKIP_STORAGE", "ftp://host/runs")  # the scheme rule of cluster.storage applies too
    with pytest.raises(StorageError, match=r"^ADASKIP_STORAGE: unsupported scheme 'ftp'"):
        Storage.resolve(None, "/x")
    with pytest.raises(ConfigError, match=r"cluster\.storage: s3://\*\*\*@b/x carries a credential") as e:
        parse_params({"cluster": {"storage": "s3://k:wJalrXUtnFEMI@b/x"}})
    assert "wJalr" not in str(e.value)


@pytest.mark.subprocess
@pytest.mark.ray
@pytest.mark.extended  # a Ray of its own (70 s); the pipeline on S3 runs in test_secrets (extended) too
def test_train_checkpoints_go_to_s3(tiny_raw, s3_env, tmp_path):
    """A Ray Train run with s3:// storage: its checkpoints are objects in the bucket, the workers open it with the
    credentials of their own environment, and the driver reads the final state through Ray's Checkpoint API; nothing
    lands in a local folder."""
    import json
    import subprocess
    import sys

    import boto3

    from helpers import merge

    params = merge(tiny_raw, {"train": {"workers": 1, "epochs": 2}})
    r = subprocess.run(
        [sys.executable, str(PROGRAMS / "train_on_s3.py"), json.dumps(params), f"s3://{BUCKET}/ray"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"epoch": 2, "state_epoch": 1, "has_model": True}
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_objects_v2(
            Bucket=BUCKET, Prefix="ray/train-s3/"
        )["Contents"]
    ]
    assert any(k.endswith("/state.pt") and "/checkpoint_" in k for k in keys), keys
    assert not list(tmp_path.rglob("state.pt"))
    store = Storage.resolve(f"s3://{BUCKET}/ray", tmp_path)
    store.remove("train-s3")
    assert not store.exists("train-s3")
