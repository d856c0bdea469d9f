"""The two-host cluster harness itself (tests/multihost.py): two Ray nodes on separate networks and disks, token
authentication, and the Gloo interface problem a multi-host run has to solve. Root only; `make test-cluster`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import pytest

from helpers import PROGRAMS, wait_until
from multihost import TwoHosts, two_hosts  # noqa: F401  (fixture)

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.ddp, pytest.mark.subprocess]

# On host1: writes a marker into P and into the shared folder, then a task on each host reports where it runs,
# which adaskip it imports and which markers it sees.

CONNECT = "import ray; ray.init(); print('CONNECTED')"

# os._exit: a Gloo group left at interpreter exit sometimes aborts ("terminate called without an active exception")
# once its peer is gone


def _gloo_pair(th: TwoHosts, port: int, ifnames: tuple[str, str] | None) -> list[subprocess.Popen[str]]:
    """Rank 0 on host1, rank 1 on host2; GLOO_SOCKET_IFNAME=each host's veth if ``ifnames``."""
    return [
        run(
            ["python", str(PROGRAMS / "gloo_pair.py"), str(rank), th.host1.ip, str(port)],
            env={"GLOO_SOCKET_IFNAME": ifnames[rank]} if ifnames else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, run in enumerate((th.host1_popen, th.host2_popen))
    ]


def _first_exit(procs: list[subprocess.Popen[str]], timeout: float) -> subprocess.Popen[str]:
    return wait_until(lambda: next((p for p in procs if p.poll() is not None), None), timeout, "a gloo rank's exit")


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_two_hosts(two_hosts: TwoHosts) -> None:  # noqa: F811 (the fixture)
    th = two_hosts
    h1, h2 = th.host1, th.host2
    P, S = th.project, th.shared
    marker, marker2 = f"m1-{uuid.uuid4().hex}", f"m2-{uuid.uuid4().hex}"
    # a file on host2's private disk only (written from outside, where that disk is host2_project)
    (th.host2_project / marker2).write_text("host2")

    r = th.host1_run(["python", str(PROGRAMS / "cluster_driver.py"), P, S, marker, marker2], timeout=180, check=True)
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    t1, t2 = out["tasks"]["host1"], out["tasks"]["host2"]
    assert [ip for ip, _ in out["alive"]] == sorted([h1.ip, h2.ip]), out["alive"]
    assert out["driver_ip"] == h1.ip
    assert (t1["ip"], t2["ip"]) == (h1.ip, h2.ip) and t1["node_id"] != t2["node_id"]
    assert {t1["node_id"], t2["node_id"]} == {n for _, n in out["alive"]}
    # each host imports adaskip from its own copy of the project, at the same path P
    assert out["driver_adaskip"] == t1["adaskip"] == t2["adaskip"] == str(P / "adaskip" / "__init__.py")
    assert (t1["own_copy"], t2["own_copy"]) == (False, True)
    # P is private to each host, S is shared
    assert (t1["sees_p"], t2["sees_p"]) == (True, False)
    assert (t1["sees_s"], t2["sees_s"]) == (True, True)
    assert (P / marker).exists() and not (th.host2_project / marker).exists()
    look = f"test -e {P / marker}; echo $?; test -e {P / marker2}; echo $?; test -e {S / marker}; echo $?"
    assert th.host2_run(look, check=True).stdout.split() == ["1", "0", "0"]
    assert th.host1_run(look, check=True).stdout.split() == ["0", "1", "0"]

    # at once (2 cores): clients without the right token are refused (one from each host), and Gloo between the
    # hosts fails without GLOO_SOCKET_IFNAME (each rank advertises its host name's address, loopback) and works
    # with each host's veth
    fast = {"RAY_gcs_server_port_wait_time_s": "2"}  # give up after 2 connect attempts, not 20
    refused = [
        th.host2_popen(
            ["python", "-c", CONNECT],
            env={**fast, "RAY_AUTH_TOKEN": "0" * 64},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        th.host1_popen(
            ["python", "-c", CONNECT],
            env={**fast, "RAY_AUTH_TOKEN": None, "RAY_AUTH_MODE": "disabled"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
    ]
    loopback = _gloo_pair(th, 29511, None)
    veth = _gloo_pair(th, 29512, (h1.ifname, h2.ifname))
    try:
        for p in refused:
            text = p.communicate(timeout=120)[0]
            assert p.returncode != 0 and "CONNECTED" not in text, text[-3000:]
            assert "Authentication token is missing or incorrect" in text, text[-3000:]
        for p in veth:
            text = p.communicate(timeout=120)[0]
            assert p.returncode == 0 and "SUM 3.0" in text, text[-3000:]
        # the rank that connects first fails at once (the other would wait out the timeout: killed)
        failed = _first_exit(loopback, timeout=120)
        text = failed.communicate()[0]
        assert failed.returncode != 0 and "127.0.0.1" in text and "SUM" not in text, text[-3000:]
    finally:
        _kill(refused + loopback + veth)

    # host2 dies: every process of its node is gone, the host (its disk, its network) stays; then it rejoins
    th.kill_host2()
    left = subprocess.run(["ip", "netns", "pids", h2.netns], capture_output=True, text=True).stdout.split()
    assert left == [str(h2.holder.pid)], left  # type: ignore[union-attr]
    assert th.host2_run(f"cat {P / marker2}", check=True).stdout == "host2"
    th.start_host2()  # waits for 2 alive nodes
