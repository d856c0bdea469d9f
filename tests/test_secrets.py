"""No credential is persisted anywhere: the whole pipeline and a study run against a real S3 API server (moto) and a
real tracking server (basic auth over HTTPS, in a network namespace of its own) with distinctive secret values in the
environment; then every object in the bucket, every MLflow param, tag, artifact and registered model (read through
the server), every file of the project, the tracking server's own state and the stages' output are scanned for them.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from helpers import BUCKET, ROOT, TINY, merge
from trackserver import start, stop, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.subprocess, pytest.mark.extended]

USER = "adaskip-admin"
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "adaskipLeakS3SecretKey0f9e8d7c6b5a",
    "AWS_SESSION_TOKEN": "adaskipLeakS3SessionToken5a4b3c2d1e",
    "MLFLOW_TRACKING_PASSWORD": "adaskipLeakTrackingPassword6e5f",
    "RAY_AUTH_TOKEN": "adaskipleakraytoken1b2c3d4e5f60718293a4b5c6d7e8f9",
}
COPY = [
    "adaskip",
    "pipelines",
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "studies/ablation/dvc.yaml",
]


def _needles() -> dict[str, bytes]:
    """Each secret as it would appear: plain, and the tracking login as a basic-auth header carries it."""
    basic = base64.b64encode(f"{USER}:{SECRETS['MLFLOW_TRACKING_PASSWORD']}".encode())
    return {**{k: v.encode() for k, v in SECRETS.items()}, "basic-auth header": basic}


def _found(blob: bytes) -> list[str]:
    return [name for name, needle in _needles().items() if needle in blob]


@pytest.fixture
def tracking_server(netns, state: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """adaskip's tracking server with basic auth and a self-signed certificate on the namespace's address; yields a
    client's environment (the password included, as a user sets it)."""
    ns, addr = netns
    port, log, url = 5000 + os.getpid() % 1000, tmp_path / "server.log", ""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_USERNAME": USER,
        "MLFLOW_TRACKING_PASSWORD": SECRETS["MLFLOW_TRACKING_PASSWORD"],
    }
    proc = start(state, addr, port, log, env, ("ip", "netns", "exec", ns), "--self-signed")
    try:
        url = f"https://{addr}:{port}"
        first = wait_ready(proc, url, log, context=ssl._create_unverified_context())
        ready = dict(line.partition("=")[::2] for line in (first, proc.stdout.readline().strip()))
        assert ready.get("MLFLOW_TRACKING_URI") == url, log.read_text()
        yield {**ready, "MLFLOW_TRACKING_USERNAME": USER, "state": str(state)}
    finally:
        stop(proc, log)


def _project(root: Path) -> Path:
    for name in COPY:
        src, dst = ROOT / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy2(
            src, dst
        )
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), merge(TINY, {"train": {"workers": 1}}))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    study = {
        "name": "ablation",
        "seeds": [0],
        "epochs": 1,
        "overrides": {"train": {"workers": 1, "cpus_per_worker": 1}},
        "variants": {"adn": {}, "kd_individual_base": {"baseline": "base", "teacher": "super"}},
    }
    (root / "studies" / "ablation" / "study.yaml").write_text(yaml.safe_dump(study))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True)
    return root


def test_no_secret_is_persisted_anywhere(s3_server, tracking_server, tmp_path: Path):
    import boto3
    from mlflow import MlflowClient

    project = _project(tmp_path / "proj")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(
        {
            **s3_server,
            **SECRETS,
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "ADASKIP_STORAGE": f"s3://{BUCKET}/leak",
            "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
            **{k: v for k, v in tracking_server.items() if k != "state"},
        }
    )
    output = b""
    for target in ([], ["studies/ablation/dvc.yaml"]):  # tune, train, evaluate, report; then the study
        r = subprocess.run(["dvc", "repro", *target], cwd=project, env=env, capture_output=True, timeout=1800)
        output += r.stdout + r.stderr
        assert r.returncode == 0, (r.stdout[-3000:] + r.stderr[-5000:]).decode(errors="replace")
    assert (project / "results" / "metrics.json").is_file()
    assert (project / "studies" / "ablation" / "results" / "comparison.csv").is_file()

    leaks: dict[str, list[str]] = {}
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="leak/")
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith(".pkl") for k in keys), keys[:50]  # Tune's experiment and trial state among them
    for key in keys:
        if found := _found(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()):
            leaks[f"s3://{BUCKET}/{key}"] = found

    os.environ.update({k: v for k, v in env.items() if k.startswith("MLFLOW_")})  # the client as the stages ran
    try:
        client = MlflowClient(tracking_server["MLFLOW_TRACKING_URI"])
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=5000)]
        assert len(runs) > 5
        download = tmp_path / "artifacts"
        for run in runs:
            record = repr((run.data.params, run.data.tags, run.info)).encode()
            if found := _found(record):
                leaks[f"MLflow run {run.info.run_id} params/tags"] = found
            if client.list_artifacts(run.info.run_id):
                client.download_artifacts(run.info.run_id, "", str(download / run.info.run_id))
        for model in client.search_registered_models():
            versions = client.search_model_versions(f"name='{model.name}'")
            if found := _found(repr((model, versions)).encode()):
                leaks[f"registered model {model.name}"] = found
    finally:
        for k in env:
            if k.startswith("MLFLOW_"):
                os.environ.pop(k, None)

    for where in (download, project, Path(tracking_server["state"])):
        for f in where.rglob("*"):
            if f.is_file() and not f.is_symlink() and (found := _found(f.read_bytes())):
                leaks[str(f)] = found
    if found := _found(output):
        leaks["the stages' output"] = found
    print(f"scanned {len(keys)} objects, {len(runs)} MLflow runs, the project, the server's state and the output")
    assert not leaks, "\n".join(f"{where}: {', '.join(what)}" for where, what in sorted(leaks.items()))
