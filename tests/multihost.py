"""A real two-host Ray cluster on this one machine, for tests marked ``cluster`` (root only).

Each host is a network namespace (one veth pair between them, so traffic stays on it) plus a private mount
namespace, kept alive by a holder process, so a host outlives its Ray node (``kill_host2`` then ``start_host2``).
The project under test is a fresh ``git clone`` of this checkout (plus its uncommitted changes) at ``project`` (P),
the same path on both hosts: host 1 sees that folder, host 2 sees its own second clone (``host2_project`` from
outside) bind-mounted over P, so neither host sees the files the other writes there (a private disk per host).
``shared`` is visible to both (NFS). Everything else (/tmp, $HOME, the venv) is the machine's, shared by both.
Each host imports adaskip from its own P (PYTHONPATH=P; the venv's editable install points at this checkout, whose
``adaskip`` is masked by an empty tmpfs on both hosts so that a leak fails loudly). Ray token authentication is on.

    with TwoHosts() as th:  # or the ``two_hosts`` fixture below
        th.host1_run(["python", "-c", "import ray; ray.init(); print(ray.nodes())"], check=True)
        th.kill_host2()
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pytest

from helpers import PROGRAMS, ROOT, wait_until

VENV = Path(sys.prefix) if sys.prefix != sys.base_prefix else ROOT / ".venv"
_counter = itertools.count()
_TAG = re.compile(r"^mh(\d+)x\d+h[12]$")  # netns names: mh<pid>x<n>h1 / h2
Cmd = str | Sequence[str | os.PathLike[str]]  # argv, or a string for `sh -c`
# Variables of the calling process that must not leak into the hosts (adaskip sets RAY_* for local runs, e.g.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which would bind a node's servers to loopback).
_SCRUB_PREFIXES = ("RAY_", "GLOO_", "TUNE_", "MLFLOW_", "NCCL_SOCKET", "TP_SOCKET", "MASTER_", "PYTEST_")
_SCRUB = {"PYTHONPATH", "VIRTUAL_ENV", "RANK", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES"}


def unavailable_reason() -> str | None:
    """Why this machine cannot run TwoHosts (not root, no ``ip netns`` / ``unshare`` / ``nsenter``), or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "git", "env"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    if not (VENV / "bin" / "ray").exists():
        return f"no ray CLI in {VENV}/bin"
    probe = f"mh{os.getpid()}probe"
    try:
        for cmd in (
            ["ip", "netns", "add", probe],
            ["ip", "netns", "exec", probe, "unshare", "--mount", "--propagation", "private", "true"],
        ):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if r.returncode:
                return f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-300:]}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def skip_unless_available() -> None:
    """pytest.skip (with the reason) where TwoHosts cannot run."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"two-host cluster harness unavailable: {reason}")


def _netns_pids(netns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def _kill_netns(netns: str, spare: Sequence[int] = (), timeout: float = 20) -> None:
    """SIGKILL every process in ``netns`` but ``spare``, until none is left (they may fork while we kill)."""
    wait_until(lambda: not _kill_once(netns, spare), timeout, f"no process left in netns {netns}")


def _kill_once(netns: str, spare: Sequence[int]) -> list[int]:
    """SIGKILL the processes now in ``netns`` but ``spare``; return them (none: nothing was left)."""
    pids = [p for p in _netns_pids(netns) if p not in spare]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def cleanup_stale() -> None:
    """Remove the namespaces (and their processes and folders) of TwoHosts runs whose pytest process is gone."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _TAG.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _kill_netns(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            shutil.rmtree(f"/tmp/{name[:-2]}", ignore_errors=True)


@dataclass
class Host:
    """One host: its network namespace, interface and address, Ray temp dir and processes."""

    name: str  # "host1" / "host2": also the Ray custom resource each node has (1 unit)
    netns: str
    ifname: str  # the veth inside netns (what GLOO_SOCKET_IFNAME would name)
    ip: str
    temp_dir: Path  # the Ray node's --temp-dir
    log: Path  # the `ray start --block` output
    holder: subprocess.Popen[bytes] | None = field(default=None, repr=False)  # keeps the namespaces alive
    node: subprocess.Popen[bytes] | None = field(default=None, repr=False)  # `ray start --block`


class TwoHosts:
    """Two hosts in network + mount namespaces, a Ray head on host1 and a worker node on host2 (see module doc).

    Use as a context manager; teardown (also on errors, and atexit) kills every process in both namespaces,
    deletes the namespaces (their veth and mounts go with them) and removes the temp folder.
    """

    def __init__(
        self,
        *,
        source: Path = ROOT,
        worktree: bool = True,
        num_cpus: int = 2,
        object_store_mb: int = 300,
        port: int = 6379,
        start_timeout: float = 180,
        node_env: Mapping[str, str] | None = None,
    ) -> None:
        """``worktree``: also copy ``source``'s uncommitted changes (modified, deleted and untracked files)
        into the clones. ``node_env``: extra environment of both Ray nodes (and so of their workers)."""
        self.source = Path(source)
        self.worktree = worktree
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.port = port
        self.start_timeout = start_timeout
        self.node_env = dict(node_env or {})
        self.tag = f"mh{os.getpid()}x{next(_counter)}"
        self.root = Path("/tmp") / self.tag  # short: AF_UNIX socket paths under the Ray temp dirs
        self.project = self.root / "p"  # P: host1's project; host2 sees host2_project at this path
        self.host2_project = self.root / "q"  # host2's private copy, seen from outside the namespaces
        self.shared = self.root / "s"  # S: visible to both hosts
        self.token = secrets.token_hex(32)
        net = f"10.231.{random.randint(16, 239)}"
        self.host1 = Host("host1", f"{self.tag}h1", f"{self.tag}v1", f"{net}.1", self.root / "a", self.root / "h1.log")
        self.host2 = Host("host2", f"{self.tag}h2", f"{self.tag}v2", f"{net}.2", self.root / "b", self.root / "h2.log")
        self._closed = True

    # -- addresses and environment ----------------------------------------------------------------------------

    @property
    def head_address(self) -> str:
        """``<host1 ip>:<port>``, for RAY_ADDRESS."""
        return f"{self.host1.ip}:{self.port}"

    @property
    def venv_bin(self) -> Path:
        return self.project / ".venv" / "bin"

    def env(self, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
        """The environment of a driver on either host: RAY_ADDRESS (the head), the token, PATH with the venv's bin,
        PYTHONPATH=P. ``extra`` overrides; a None value removes the variable (e.g. ``{"RAY_AUTH_TOKEN": None}``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB}
        env.update(
            {
                "PATH": f"{self.venv_bin}:{env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
                "VIRTUAL_ENV": str(self.project / ".venv"),
                "PYTHONPATH": str(self.project),
                "RAY_ADDRESS": self.head_address,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token,
                "RAY_USAGE_STATS_ENABLED": "0",
                "DVC_NO_ANALYTICS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for k, v in (extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def _node_env(self) -> dict[str, str]:
        return self.env({"RAY_ADDRESS": None, **self.node_env})

    # -- running commands on a host ---------------------------------------------------------------------------

    def _argv(self, host: Host, cmd: Cmd, cwd: str | os.PathLike[str] | None) -> list[str]:
        if host.holder is None or host.holder.poll() is not None:
            raise RuntimeError(f"{host.name} is not up")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else [os.fspath(c) for c in cmd]
        # cwd is set after entering the mount namespace (env -C): a cwd (or nsenter --wd) opened outside would
        # keep pointing at host1's P on host2
        return [
            "nsenter",
            "--mount",
            "--net",
            f"--target={host.holder.pid}",
            "--",
            "env",
            "-C",
            os.fspath(cwd or self.project),
            *argv,
        ]

    def _popen(
        self, host: Host, cmd: Cmd, env: Mapping[str, str | None] | None, cwd: Any, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self._argv(host, cmd, cwd), env=self.env(env), **kwargs)

    def _run(
        self, host: Host, cmd: Cmd, env: Mapping[str, str | None] | None, timeout: float, check: bool, cwd: Any
    ) -> subprocess.CompletedProcess[str]:
        p = self._popen(host, cmd, env, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            raise AssertionError(f"{host.name}: {cmd!r} timed out after {timeout} s\n{out[-3000:]}\n{err[-5000:]}")
        r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        if check and r.returncode:
            raise AssertionError(f"{host.name}: {cmd!r} exited {r.returncode}\n{out[-3000:]}\n{err[-5000:]}")
        return r

    def host1_run(
        self,
        cmd: Cmd,
        env: Mapping[str, str | None] | None = None,
        timeout: float = 300,
        check: bool = False,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (argv, or a string for ``sh -c``) on host1, cwd P, env ``self.env(env)``; text output
        captured. ``check``: raise AssertionError (with the output) on a non-zero exit."""
        return self._run(self.host1, cmd, env, timeout, check, cwd)

    def host2_run(
        self,
        cmd: Cmd,
        env: Mapping[str, str | None] | None = None,
        timeout: float = 300,
        check: bool = False,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Like host1_run, on host2 (its network and its private P)."""
        return self._run(self.host2, cmd, env, timeout, check, cwd)

    def host1_popen(
        self,
        cmd: Cmd,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``cmd`` on host1 (Popen kwargs pass through; own session by default: os.killpg(p.pid, ...))."""
        return self._popen(self.host1, cmd, env, cwd, **kwargs)

    def host2_popen(
        self,
        cmd: Cmd,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Like host1_popen, on host2."""
        return self._popen(self.host2, cmd, env, cwd, **kwargs)

    # -- set-up ------------------------------------------------------------------------------------------------

    def _sh(self, *cmd: str | os.PathLike[str], cwd: Path | None = None) -> str:
        r = subprocess.run([os.fspath(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r.stdout

    def _clone(self, dst: Path) -> None:
        self._sh("git", "-c", "safe.directory=*", "clone", "-q", self.source, dst)
        if self.worktree:
            git = ["git", "-c", "safe.directory=*", "-C", str(self.source), "ls-files", "-z"]
            for rel in filter(None, self._sh(*git, "--deleted").split("\0")):
                (dst / rel).unlink(missing_ok=True)
            for rel in filter(None, self._sh(*git, "--modified", "--others", "--exclude-standard").split("\0")):
                src = self.source / rel
                if src.is_file() or src.is_symlink():
                    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst / rel, follow_symlinks=False)
        (dst / ".venv").symlink_to(VENV)

    def _start_holder(self, host: Host, mounts: Sequence[str]) -> None:
        script = "set -e; " + "; ".join(mounts) + "; echo ready; exec sleep infinity"
        host.holder = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert host.holder.stdout is not None and host.holder.stderr is not None
        if host.holder.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{host.name} mount set-up failed: {host.holder.stderr.read().decode()[-2000:]}")
        host.holder.stdout.close()

    def _start_node(self, host: Host, *args: str) -> None:
        host.temp_dir.mkdir(parents=True, exist_ok=True)
        resources = '{"%s": 1}' % host.name
        cmd = [
            "ray",
            "start",
            *args,
            f"--node-ip-address={host.ip}",
            f"--num-cpus={self.num_cpus}",
            f"--resources={resources}",
            f"--object-store-memory={self.object_store_mb * 2**20}",
            f"--temp-dir={host.temp_dir}",
            "--disable-usage-stats",
            "--block",
        ]
        offset = host.log.stat().st_size if host.log.exists() else 0  # the log is appended to on restarts
        with open(host.log, "ab") as log:  # the child keeps its own descriptor
            host.node = self._popen(host, cmd, self._node_env(), None, stdout=log, stderr=subprocess.STDOUT)
        self._wait_log(host, "Ray runtime started", offset)

    def _wait_log(self, host: Host, line: str, offset: int) -> None:
        def logged() -> bool:
            with open(host.log, "rb") as f:
                f.seek(offset)
                return line in f.read().decode(errors="replace")

        node = host.node
        assert node is not None
        wait_until(
            logged,
            self.start_timeout,
            f"{host.name}: ray start",
            alive=lambda: node.poll() is None,
            detail=lambda: self.node_log(host),
        )

    def node_log(self, host: Host, chars: int = 4000) -> str:
        """The tail of a host's `ray start --block` output (for assertion messages)."""
        return host.log.read_text(errors="replace")[-chars:] if host.log.exists() else ""

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        """Until the cluster has exactly ``n`` alive nodes (a driver on host1 polls)."""
        self.host1_run(
            ["python", str(PROGRAMS / "wait_nodes.py"), str(n), str(timeout)], timeout=timeout + 60, check=True
        )

    def start_host2(self, wait: bool = True) -> None:
        """Start host2's Ray node (joins the head); again after ``kill_host2`` to bring the host back."""
        self._start_node(self.host2, f"--address={self.head_address}")
        if wait:
            self.wait_nodes(2)

    def start(self) -> None:
        cleanup_stale()
        self._closed = False
        atexit.register(self.close)
        for d in (self.shared, self.host1.temp_dir, self.host2.temp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._clone(self.project)
        self._clone(self.host2_project)
        h1, h2 = self.host1, self.host2
        for h in (h1, h2):
            self._sh("ip", "netns", "add", h.netns)
        self._sh("ip", "link", "add", h1.ifname, "type", "veth", "peer", "name", h2.ifname)
        for h in (h1, h2):
            self._sh("ip", "link", "set", h.ifname, "netns", h.netns)
            self._sh("ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", h.ifname)
            self._sh("ip", "-n", h.netns, "link", "set", "lo", "up")
            self._sh("ip", "-n", h.netns, "link", "set", h.ifname, "up")
            # a default route, so that "which address reaches the outside" (Ray's node IP guess) is the veth's
            self._sh("ip", "-n", h.netns, "route", "add", "default", "dev", h.ifname)
        mask = f"mount -t tmpfs -o ro,size=64k mhmask {self.source / 'adaskip'}"
        self._start_holder(h1, [mask])
        self._start_holder(h2, [f"mount --bind {self.host2_project} {self.project}", mask])
        self._start_node(h1, "--head", f"--port={self.port}", "--include-dashboard=false")
        self.start_host2()

    # -- failure and teardown ----------------------------------------------------------------------------------

    def kill_host2(self) -> None:
        """SIGKILL every process of host2's Ray node (raylet, workers, ...: all processes in host2's netns but
        the namespace holder), as when the worker machine dies. host2_run still works; start_host2 rejoins."""
        h = self.host2
        if h.node is not None:
            try:
                os.killpg(h.node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _kill_netns(h.netns, spare=[h.holder.pid] if h.holder else [])
        if h.node is not None:
            h.node.wait(timeout=30)
            h.node = None

    def close(self) -> None:
        """Tear everything down (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        for h in (self.host2, self.host1):
            try:
                _kill_netns(h.netns)
            except Exception as e:  # noqa: BLE001 (still delete the rest)
                errors.append(str(e))
            for p in (h.node, h.holder):
                if p is not None:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        errors.append(f"{h.name}: pid {p.pid} did not exit")
            if h.holder is not None and h.holder.stderr is not None:
                h.holder.stderr.close()
            r = subprocess.run(["ip", "netns", "del", h.netns], capture_output=True, text=True, timeout=30)
            if r.returncode and "No such file" not in r.stderr:
                errors.append(f"ip netns del {h.netns}: {r.stderr.strip()}")
        subprocess.run(["ip", "link", "del", self.host1.ifname], capture_output=True, timeout=30)  # if never moved
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise RuntimeError("TwoHosts teardown: " + "; ".join(errors))

    def __enter__(self) -> TwoHosts:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[TwoHosts]:
    """A started TwoHosts for a test module (``from multihost import two_hosts``); skips where unavailable."""
    skip_unless_available()
    with TwoHosts() as th:
        yield th


__all__ = [
    "TwoHosts",
    "two_hosts",
    "Host",
    "skip_unless_available",
    "unavailable_reason",
    "cleanup_stale",
    "ROOT",
    "VENV",
]
