"""Ray Train as adaskip runs it: every Ray Train method adaskip overrides (docs/library.md "Private APIs"), in one
place. Each worker's process group forms on loopback (a local run) or the node's interface; a recurring worker error
ends a run instead of using up its restarts; a local Ray sends no autoscaler requests; two per-run actors adaskip
does not use are not started."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from ray.train import TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.torch.config import _TorchBackend  # no public hook runs in the workers before the process group
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy  # nor one chooses the policy
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy  # ... or the scaling policy

from ..errors import AdaskipError
from .cluster import joins_cluster, use_node_interface

log = logging.getLogger(__name__)

_KEEP: list = []  # the loopback rendezvous server and its socket, alive as long as the worker process


def rendezvous_on_loopback() -> None:
    """In a Train worker, before its process group is set up: torch.distributed's env:// rendezvous store, which
    rank 0 hosts, is bound by torch to every interface; when MASTER_ADDR is a loopback address (a local Ray),
    rank 0 opens that store on it first and init_process_group shares this server (a multi-tenant TCPStore)."""
    from torch.distributed import TCPStore
    from torch.distributed.constants import default_pg_timeout
    from torch.distributed.rendezvous import _rendezvous_handlers as handlers  # torch has no public way to wrap one

    default = handlers["env"]

    def env_handler(url: str, timeout: timedelta = default_pg_timeout, **kwargs: Any):
        addr, port = os.environ.get("MASTER_ADDR", ""), int(os.environ.get("MASTER_PORT", 0))
        if os.environ.get("RANK") == "0" and port and ipaddress.ip_address(addr).is_loopback:
            sock = socket.create_server((addr, port))
            _KEEP.extend(
                [
                    sock,
                    TCPStore(
                        addr,
                        port,
                        int(os.environ["WORLD_SIZE"]),
                        True,
                        timeout,
                        wait_for_workers=False,
                        multi_tenant=True,
                        master_listen_fd=sock.fileno(),
                    ),
                ]
            )
        return default(url, timeout=timeout, **kwargs)

    handlers["env"] = env_handler


def _prepare_network() -> None:
    use_node_interface()
    rendezvous_on_loopback()


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        worker_group.execute(_prepare_network)
        super().on_start(worker_group, backend_config)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """Ray Train's torch set-up, with the rendezvous store of a local run on loopback (see rendezvous_on_loopback)
    and, on a cluster, Gloo/NCCL on the interface of each node's Ray address (see use_node_interface)."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


class RecurringTrainingError(AdaskipError):
    """A Train worker failed with an error that every restart would raise again, so it was not retried."""


def recurring_error(error: BaseException) -> Optional[BaseException]:
    """The first worker error in Ray Train's ``error`` that a restart from the latest checkpoint would raise again:
    a bad value or shape (ValueError, TypeError) or an AdaskipError that recurs (a diverged loss, a corrupt file)."""
    for failure in getattr(error, "worker_failures", {}).values():
        cause = getattr(failure, "_base_exc", failure)  # Ray's UserExceptionWithTraceback wraps the worker's error
        if isinstance(cause, (ValueError, TypeError)) or getattr(cause, "recurs", False):
            return cause
    return None


class _RecurringErrorsFinal(DefaultFailurePolicy):
    """Ray Train's failure policy, except that a recurring worker error (see recurring_error) ends the run at once
    instead of using up train.max_failures restarts."""

    def _is_retryable_error(self, training_failed_error: TrainingFailedError) -> bool:
        return recurring_error(training_failed_error) is None and super()._is_retryable_error(training_failed_error)


# Ray Train's default callbacks that start an actor per run that adaskip does not need (a study starts a run per cell;
# each actor is a process importing Ray: benchmarks/cell_overhead.py counts their CPU): the Ray Data manager (adaskip
# passes no Ray Datasets; it also starts Ray Data's autoscaling coordinator, whose resource requests time out on a busy
# machine and print a traceback) and the detached placement-group cleaner (for a controller that dies while its driver
# lives on; the driver's end releases a run's placement group anyway, and a study's cells fail with it).
_NOT_NEEDED = {"DatasetsCallback", "PlacementGroupCleanerCallback"}


# Ray Train's controller takes one report per poll of its workers (each worker's report queue holds one), polling every
# 2 s by default: a worker whose epochs are shorter than a poll (a baseline cell on digits) waited for each poll, its
# core idle (benchmarks/cell_overhead.py measures the difference). A poll is a small call per worker; Ray Train passes
# this variable on from the driver (a value set in the environment wins).
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


class _NoAutoscaler(FixedScalingPolicy):
    """Ray Train's fixed-size scaling, without resource requests to a cluster autoscaler: a local Ray has none, and
    each request (a detached actor's call with a short timeout) fails on a busy 2-core machine with a traceback."""

    def after_controller_start(self, train_run_context) -> None:
        pass

    def _maybe_send_resource_request(self) -> None:
        pass

    def _cancel_resource_request(self) -> None:
        pass


class Trainer(TorchTrainer):
    def _initialize_and_run_controller(self, **controller_init_kwargs):
        controller_init_kwargs["failure_policy"] = _RecurringErrorsFinal(self.run_config.failure_config)
        if not joins_cluster():
            controller_init_kwargs["scaling_policy"] = _NoAutoscaler(self.scaling_config)
        controller_init_kwargs["callbacks"] = [
            c for c in controller_init_kwargs["callbacks"] if type(c).__name__ not in _NOT_NEEDED
        ]
        return super()._initialize_and_run_controller(**controller_init_kwargs)
