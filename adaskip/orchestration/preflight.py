"""Preflight of a Ray cluster: one task on every alive node checks, in seconds, what a multi-hour run needs.

Same adaskip code (source digest; the git commit is reported) and torch/timm/ray/mlflow versions as the driver,
the tracking server answering this node's credentials, the storage writable and shared (a file the driver wrote is
visible), ``data.path`` and a local ``model.pretrained`` readable, and a network interface for torch.distributed
that the other nodes can reach. ``adaskip doctor`` prints the report; every stage that joins a cluster
(``RAY_ADDRESS``) runs it first and stops on a problem.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import ipaddress
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..config import Params
from ..errors import AdaskipError
from .cluster import interface_of
from .storage import Storage, s3_credential_source

PACKAGES = ("torch", "timm", "ray", "mlflow")
LOCAL_TRACKING = ("sqlite:", "file:")
PROBE_DIR = ".preflight"


class PreflightError(AdaskipError, RuntimeError):
    """A node of the cluster cannot run the pipeline as configured; one line per problem."""


@dataclass(frozen=True)
class Expect:
    """What the driver has and has set up: every node must match it."""

    versions: dict[str, str]
    tracking_uri: str
    storage: Storage
    probe: str
    paths: dict[str, str]  # params key -> a file or folder every node must read (data.path, model.pretrained)
    driver_ip: str


@dataclass
class NodeReport:
    node_id: str
    ip: str
    hostname: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was verified how: TLS, where S3 credentials come from

    def line(self) -> str:
        where = f"node {self.ip} ({self.hostname}, {self.node_id[:8]})"
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{where}: " + ("ok" if not self.problems else "; ".join(self.problems)) + notes


@functools.lru_cache(maxsize=1)
def code_versions() -> dict[str, str]:
    """adaskip's source digest and git commit, and the versions of the packages every node must share."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        digest.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "none"
        )
    except OSError:
        commit = "none"
    return {
        "adaskip": digest.hexdigest()[:12],
        "git": commit[:10],
        **{p: importlib.metadata.version(p) for p in PACKAGES},
    }


def _check_node(expect: Expect) -> NodeReport:
    """Runs on one node (a Ray task pinned there)."""
    import socket

    ip = ray.util.get_node_ip_address()
    report = NodeReport(ray.get_runtime_context().get_node_id(), ip, socket.gethostname())
    mine = code_versions()
    for key, want in expect.versions.items():
        if key == "git" or mine.get(key) == want:  # the commit only names the code: its digest decides
            continue
        what = (
            f"adaskip source (digest {mine[key]}, commit {mine['git']})"
            if key == "adaskip"
            else f"{key} {mine.get(key)}"
        )
        theirs = f"{want}, commit {expect.versions['git']}" if key == "adaskip" else want
        report.problems.append(
            f"{what} differs from the driver's ({theirs}): install the same checkout and "
            "requirements.lock on every node"
        )
    report.problems += _tracking_problems(expect, ip) + _storage_problems(expect, ip) + _data_problems(expect)
    report.problems += _network_problems(ip)
    if expect.tracking_uri.startswith("https://") and not any("tracking server" in p for p in report.problems):
        report.notes.append(_tls_note())
    if expect.storage.uri.startswith("s3://"):  # the source, never the value
        report.notes.append(f"S3 credentials: {s3_credential_source()}")
    return report


def _tls_note() -> str:
    from ..tracking import CERT_ENV

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return "tracking server's certificate NOT verified (MLFLOW_TRACKING_INSECURE_TLS=true)"
    trusted = f"{CERT_ENV}={os.environ[CERT_ENV]}" if os.environ.get(CERT_ENV) else "the system's CAs"
    return f"tracking server's certificate verified against {trusted}"


def _tracking_problems(expect: Expect, ip: str) -> list[str]:
    from ..tracking import TrackingError, check_access

    uri = expect.tracking_uri
    if uri.startswith(LOCAL_TRACKING) and ip != expect.driver_ip:
        return [
            f"MLflow tracking URI {uri} is a file on the driver's host, which this host cannot log to: start a "
            "tracking server (python -m adaskip.ops.tracking_server, see docs/scaling-out.md) and set "
            "MLFLOW_TRACKING_URI=http://<server>:<port>"
        ]
    try:
        check_access(uri)
    except TrackingError as e:
        return [str(e)]
    return []


def _storage_problems(expect: Expect, ip: str) -> list[str]:
    store = expect.storage
    fix = (
        "set cluster.storage (or ADASKIP_STORAGE) to a folder mounted at the same path on every node (NFS) or to "
        "s3://bucket/prefix"
    )
    try:
        if not store.exists(f"{PROBE_DIR}/{expect.probe}"):
            return [
                f"storage {store} does not hold the file the driver just wrote there (a folder private to each "
                f"host?): {fix}"
            ]
        mine = f"{PROBE_DIR}/{expect.probe}-{ip}"
        store.write_bytes(mine, b"ok")
        store.remove(mine)
    except OSError as e:
        return [f"storage {store} is not writable here ({type(e).__name__}: {str(e)[:160]}): {fix}"]
    return []


def _data_problems(expect: Expect) -> list[str]:
    def readable(path: str) -> bool:
        return os.access(path, os.R_OK | os.X_OK) if os.path.isdir(path) else os.access(path, os.R_OK)

    return [
        f"{key} {path} is not readable here: make it available at the same path on every node"
        for key, path in expect.paths.items()
        if not readable(path)
    ]


def _network_problems(ip: str) -> list[str]:
    if ipaddress.ip_address(ip).is_loopback:
        return []
    chosen = os.environ.get("GLOO_SOCKET_IFNAME")
    import psutil

    if chosen and chosen not in psutil.net_if_addrs():
        return [
            f"GLOO_SOCKET_IFNAME={chosen} names no interface of this host: unset it (adaskip picks the "
            "interface of the node's Ray address) or name an existing one"
        ]
    if not chosen and interface_of(ip) is None:
        return [
            f"the node's Ray address {ip} is on no interface of this host: start the node with "
            "--node-ip-address=<an address of this host> or set GLOO_SOCKET_IFNAME"
        ]
    return []


def run_preflight(
    tracking_uri: str, storage: Storage, paths: Optional[dict[str, str]] = None, timeout: float = 60.0
) -> list[NodeReport]:
    """One check task on every alive node; returns their reports (a node that does not answer in ``timeout``
    seconds gets a problem of its own)."""
    probe, existed = uuid.uuid4().hex[:12], storage.exists()
    storage.write_bytes(f"{PROBE_DIR}/{probe}", b"adaskip preflight")
    expect = Expect(code_versions(), tracking_uri, storage, probe, dict(paths or {}), ray.util.get_node_ip_address())
    task = ray.remote(num_cpus=0, max_retries=0)(_check_node)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    refs = {
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(expect): n
        for n in nodes
    }
    try:
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        reports = []
        for ref in ready:
            try:
                reports.append(ray.get(ref))
            except Exception as e:  # noqa: BLE001  (a node whose task crashed is one failing node)
                n = refs[ref]
                reports.append(NodeReport(n["NodeID"], n["NodeManagerAddress"], "?", [f"check crashed: {e}"[:300]]))
        for ref in late:
            n = refs[ref]
            reports.append(
                NodeReport(
                    n["NodeID"],
                    n["NodeManagerAddress"],
                    "?",
                    [f"did not answer in {timeout:.0f} s: is the node busy or cut off?"],
                )
            )
            ray.cancel(ref, force=True)
    finally:
        storage.remove(f"{PROBE_DIR}/{probe}" if existed else "")  # a storage made for the probe goes with it
    return sorted(reports, key=lambda r: r.ip)


def required_paths(params: Params) -> dict[str, str]:
    """The local files and folders a run of ``params`` reads on every node."""
    pretrained = params.model.pretrained
    paths = {
        "data.path": params.data.path,
        "model.pretrained": pretrained if pretrained and os.path.exists(pretrained) else None,
    }
    return {k: v for k, v in paths.items() if v}


def require_ready(tracking_uri: str, storage: Storage, paths: Optional[dict[str, str]] = None) -> list[NodeReport]:
    """``run_preflight``, raising one line per failing node."""
    reports = run_preflight(tracking_uri, storage, paths)
    bad = [r for r in reports if r.problems]
    if bad:
        raise PreflightError(
            f"preflight: {len(bad)} of {len(reports)} node(s) cannot run this pipeline "
            "(adaskip doctor repeats this check):\n" + "\n".join(r.line() for r in bad)
        )
    return reports
