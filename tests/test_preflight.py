"""The cluster preflight (adaskip doctor) on a real local Ray: each check finds its problem and names the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaskip.orchestration.storage import Storage

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_a_ready_node_passes(ray_cluster, mlflow_uri, tmp_path):
    from adaskip.orchestration.preflight import require_ready

    reports = require_ready(mlflow_uri, Storage(str(tmp_path / "store")), {"data.path": str(tmp_path)})
    assert len(reports) == 1 and reports[0].problems == [] and reports[0].line().endswith(": ok")
    assert not list((tmp_path / "store").rglob("*-*")), "the probe files are removed"


@pytest.mark.ray
def test_each_problem_is_named_with_its_fix(ray_cluster, tmp_path):
    from adaskip.orchestration.preflight import PreflightError, require_ready

    store = Storage(str(tmp_path / "store"))
    with pytest.raises(PreflightError) as err:
        # nothing listens on port 9 of loopback; the data folder does not exist
        require_ready("http://127.0.0.1:9", store, {"data.path": str(tmp_path / "no-such-data")})
    text = str(err.value)
    assert text.startswith("preflight: 1 of 1 node(s) cannot run this pipeline")
    assert len(text.splitlines()) == 2  # one line per failing node
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in text
    assert f"data.path {tmp_path / 'no-such-data'} is not readable here" in text


@pytest.mark.ray
def test_storage_not_shared_and_local_tracking_on_another_host(ray_cluster, tmp_path):
    """What a node on another host sees: the driver's probe file missing (a folder private to each host) and a
    SQLite store that lives on the driver's host."""
    from adaskip.orchestration.preflight import Expect, _storage_problems, _tracking_problems

    expect = Expect({}, f"sqlite:///{tmp_path}/mlflow.db", Storage(str(tmp_path)), "never-written", {}, "10.0.0.1")
    [storage] = _storage_problems(expect, "10.0.0.2")
    assert "does not hold the file the driver just wrote" in storage and "cluster.storage" in storage
    [tracking] = _tracking_problems(expect, "10.0.0.2")
    assert "is a file on the driver's host" in tracking and "MLFLOW_TRACKING_URI=http://" in tracking
    assert _tracking_problems(expect, "10.0.0.1") == []  # the driver's own host can use it


def test_gloo_interface_is_the_one_holding_the_node_address():
    from adaskip.orchestration.preflight import interface_of

    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("203.0.113.77") is None  # TEST-NET-3: on no interface here


@pytest.mark.ray
@pytest.mark.subprocess
def test_doctor_command_reports_and_exits_nonzero(tmp_path):
    """`adaskip doctor` as a user runs it: one line per node, exit 1 when a node fails, 2 on bad params."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    env.pop("RAY_ADDRESS", None)
    exe = str(Path(sys.executable).with_name("adaskip"))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = subprocess.run([exe, "doctor"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 node(s) failing" in out.stdout and "is unreachable" in out.stdout
    (tmp_path / "params.yaml").write_text("cluster: {storage: 'ftp://x'}\n")
    out = subprocess.run([exe, "doctor"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "cluster.storage: unsupported scheme 'ftp'" in out.stderr


@pytest.mark.ray
def test_other_code_or_packages_on_a_node_are_named(ray_cluster, tmp_path):
    """A node whose adaskip sources or package versions differ from the driver's (the git commit alone decides
    nothing: a commit may change only documentation)."""
    from adaskip.orchestration.preflight import Expect, _check_node, code_versions

    store = Storage(str(tmp_path))
    store.write_bytes(".preflight/p", b"x")
    mine = code_versions()
    same_code = Expect({**mine, "git": "0123456789"}, "sqlite:///x.db", store, "p", {}, "127.0.0.1")
    assert _check_node(same_code).problems == []
    other = Expect({**mine, "adaskip": "000000000000", "torch": "0.0"}, "sqlite:///x.db", store, "p", {}, "127.0.0.1")
    problems = _check_node(other).problems
    assert len(problems) == 2 and problems[0].startswith(f"adaskip source (digest {mine['adaskip']}")
    assert f"torch {mine['torch']} differs from the driver's (0.0)" in problems[1]
