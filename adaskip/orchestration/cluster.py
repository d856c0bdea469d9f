"""Starting or joining a Ray cluster."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from typing import Optional

from ..console import RAY_QUIET_ACTORS, condense_tracebacks, is_ray_noise, verbose
from ..redact import redact

log = logging.getLogger(__name__)

# The environment Ray reads, which configure_ray_env sets.
RAY_ENV = (
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("RAY_AUTH_MODE", "token"),
    ("RAY_DEDUP_LOGS", "1"),
    # epoch lines are never folded into "[repeated Nx across cluster]": a study's cells train at once and
    # their lines differ only in numbers, which Ray's de-duplication ignores
    ("RAY_DEDUP_LOGS_ALLOW_REGEX", r"epoch +\d+/\d+ "),
    ("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600"),
    ("TUNE_DISABLE_SIGINT_HANDLER", "1"),
)
# ... and for a local Ray only: its servers on loopback (read once, when ray is first imported); no preemption watcher
# (spot nodes of a cloud cluster) nor Prometheus metrics (no dashboard), whose per-run actors each start a process
# importing Ray for every Ray Train run (a study starts one run per cell; benchmarks/cell_overhead.py measures it)
LOCAL_RAY_ENV = (
    ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
    ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
    ("RAY_TRAIN_METRICS_ENABLED", "0"),
)


def configure_ray_env() -> None:
    """Set adaskip's defaults of Ray's environment variables in ``os.environ`` (what the user set wins); call it
    before anything imports ray: Ray reads some of them once, when first imported or used in a process, and its
    workers, `ray start` heads and stage subprocesses inherit them from the caller.

    Offline machines: no usage stats. A local Ray (no RAY_ADDRESS) listens on loopback only: Ray binds its servers to
    127.0.0.1 when it treats the machine as "no cluster", its default on macOS and Windows, which
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 selects on Linux (otherwise every server listens on all interfaces and
    --node-ip-address=127.0.0.1 is overridden). Not when joining a cluster: its nodes must reach this driver. Token
    authentication stays on too: a new local cluster writes ~/.ray/auth_token and a stage joining a cluster sends it
    (RAY_AUTH_MODE=disabled to join an unauthenticated cluster). Ray Train's 60 s
    worker-group start timeout is too short when a few workers import torch at once on 2 cores (then it retries
    forever): allow 10 minutes. Tune's own Ctrl-C handler stops the sweep and returns the finished trials as if it
    had completed: disabled, so Ctrl-C interrupts the stage (outputs not written, runs KILLED). setdefault keeps what
    the user set; Ray Train propagates these to its controller.
    """
    for k, v in RAY_ENV:
        os.environ.setdefault(k, v)
    if not os.environ.get("RAY_ADDRESS"):
        for k, v in LOCAL_RAY_ENV:
            os.environ.setdefault(k, v)


# What the driver's environment says about the tracking server and the storage, passed on to every task and worker
# of the job: a node on another host reaches them with the same settings and credentials (Ray's token keeps them
# from anyone outside the cluster).
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "ADASKIP_STORAGE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "ADASKIP_VERBOSE",
    "ADASKIP_PROGRESS",
    "MLFLOW_LOGGING_LEVEL",
)


def joins_cluster() -> bool:
    """Whether this process joins an existing Ray cluster (``RAY_ADDRESS``) rather than starting one."""
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` if set, else start a local one sized to this machine."""
    import ray

    from ..console import PROGRESS_ENV, progress_bars

    if ray.is_initialized():
        return
    on_sigterm = signal.getsignal(signal.SIGTERM)
    # workers' output is never a terminal: they draw progress bars when this driver's stderr is one
    os.environ.setdefault(PROGRESS_ENV, "1" if progress_bars() else "0")
    if joins_cluster():
        log.info("joining the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        ray.init(log_to_driver=True, runtime_env={"env_vars": env} if env else None)
    else:
        cpus = num_cpus or os.cpu_count() or 1
        # idle worker processes Ray keeps (default: one per CPU, the rest killed after 1 s idle): a study's Ray
        # Train actors keep more than that busy, so a finished grid task's process, torch imported, would go
        os.environ.setdefault("RAY_num_workers_soft_limit", str(2 * cpus + 4))
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            object_store_memory=300 * 2**20,
            log_to_driver=True,
            configure_logging=False,
        )
    quiet_ray_output()  # Ray's repeated status lines out of the forwarded worker output (ADASKIP_VERBOSE=1: all)
    # Ray's core worker installs a C-level SIGTERM handler that aborts the process; put the stage's own back, so
    # SIGTERM still ends MLflow runs as KILLED and exits 130 like Ctrl-C.
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def interface_of(ip: str) -> Optional[str]:
    """The network interface that holds address ``ip`` on this host (psutil ships with Ray)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addrs):
            return name
    return None


def use_node_interface() -> Optional[str]:
    """Point Gloo and NCCL at the interface of this node's Ray address unless the user chose one: they otherwise
    take the address the host name resolves to, loopback on many hosts, and the other nodes cannot connect."""
    import ray

    ip = ray.util.get_node_ip_address()
    if ipaddress.ip_address(ip).is_loopback:
        return None
    name = interface_of(ip)
    if name:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", name)
    return name


def quiet_ray_output() -> bool:
    """In a Ray driver: drop RAY_NOISE lines, traceback frames (see condense_tracebacks) and all of RAY_QUIET_ACTORS'
    output from the worker output Ray forwards to this process (what Ray's own
    settings cannot turn off: the Train placement-group watchdog runs outside Train's logging config). Ray's
    ``log_to_driver`` forwarder is one handler of its stdstream dispatcher; it is wrapped so each batch loses the
    noise lines first. No-op with ``ADASKIP_VERBOSE=1``, or when this Ray has no such handler; True when installed."""
    if verbose():
        return False
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    handler = next((h for name, h in getattr(dispatcher, "handlers", []) if name == "ray_print_logs"), None)
    if handler is None or getattr(handler, "_adaskip_quiet", False):
        return False

    def quiet(data: dict) -> None:
        if data.get("actor_name") in RAY_QUIET_ACTORS:
            return
        lines = condense_tracebacks([redact(line) for line in data.get("lines", []) if not is_ray_noise(line)])
        if lines:
            handler({**data, "lines": lines})

    quiet._adaskip_quiet = True  # type: ignore[attr-defined]
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", quiet)
    return True
