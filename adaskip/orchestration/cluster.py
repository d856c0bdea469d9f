"""Starting or joining a Ray cluster."""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

# Offline machines: no usage stats. A local Ray (no RAY_ADDRESS) listens on loopback only: Ray binds its servers to
# 127.0.0.1 when it treats the machine as "no cluster", its default on macOS and Windows, which
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 selects on Linux (otherwise every server listens on all interfaces and
# --node-ip-address=127.0.0.1 is overridden). Not when joining a cluster: its nodes must reach this driver. Token
# authentication stays on too: a new local cluster writes ~/.ray/auth_token and a stage joining a cluster sends it
# (RAY_AUTH_MODE=disabled to join an unauthenticated cluster). Ray Train's 60 s
# worker-group start timeout is too short when a few workers import torch at once on 2 cores (then it retries
# forever): allow 10 minutes. Tune's own Ctrl-C handler stops the sweep and returns the finished trials as if it
# had completed: disabled, so Ctrl-C interrupts the stage (outputs not written, runs KILLED). setdefault keeps what
# the user set; Ray Train propagates these to its controller.
for _k, _v in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "token"), ("RAY_DEDUP_LOGS", "1"),
               ("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600"), ("TUNE_DISABLE_SIGINT_HANDLER", "1")):
    os.environ.setdefault(_k, _v)
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read once, when ray is first imported


_KEEP: list = []  # the loopback rendezvous server and its socket, alive as long as the worker process


def rendezvous_on_loopback() -> None:
    """Ray worker set-up hook of a local run. torch.distributed's env:// rendezvous store, which Ray Train's rank 0
    hosts, is bound by torch to every interface; when MASTER_ADDR is a loopback address, rank 0 opens that store on
    it first, and init_process_group then shares this server (a multi-tenant TCPStore on the same port)."""
    from torch.distributed import TCPStore
    from torch.distributed.constants import default_pg_timeout
    from torch.distributed.rendezvous import _rendezvous_handlers as handlers  # torch has no public way to wrap one

    default = handlers["env"]

    def env_handler(url: str, timeout: timedelta = default_pg_timeout, **kwargs: Any):
        addr, port = os.environ.get("MASTER_ADDR", ""), int(os.environ.get("MASTER_PORT", 0))
        if os.environ.get("RANK") == "0" and port and ipaddress.ip_address(addr).is_loopback:
            sock = socket.create_server((addr, port))
            _KEEP.extend([sock, TCPStore(addr, port, int(os.environ["WORLD_SIZE"]), True, timeout,
                                         wait_for_workers=False, multi_tenant=True, master_listen_fd=sock.fileno())])
        return default(url, timeout=timeout, **kwargs)

    handlers["env"] = env_handler


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` if set, else start a local one sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if os.environ.get("RAY_ADDRESS"):
        log.info("joining the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, object_store_memory=300 * 2**20,
                 log_to_driver=True, configure_logging=False,
                 runtime_env={"worker_process_setup_hook": f"{__name__}.rendezvous_on_loopback"})
    # Ray's core worker installs a C-level SIGTERM handler that aborts the process; put the stage's own back, so
    # SIGTERM still ends MLflow runs as KILLED and exits 130 like Ctrl-C.
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))
