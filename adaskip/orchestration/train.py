"""Ray Train: distributed self-distillation with per-epoch checkpoints, resume and rank-0 MLflow logging."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import ray.train
from ray.train import (
    CheckpointConfig,
    CheckpointUploadMode,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchConfig, TorchTrainer, get_device, prepare_model
from ray.train.torch.config import _TorchBackend  # no public hook runs in the workers before the process group
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy  # nor one chooses the policy
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy  # ... or the scaling policy

from ..config import Params, TrainParams
from ..console import verbose
from ..errors import AdaskipError, describe
from .cluster import joins_cluster, use_node_interface
from .storage import Storage

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
NODES_TAG = "adaskip.train_nodes"


@dataclass(frozen=True)
class TrackingTarget:
    """Where rank 0 logs: an absolute tracking URI, experiment and an existing run id."""

    uri: str
    experiment: str
    run_id: str


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


class _Trainer(TorchTrainer):
    def _initialize_and_run_controller(self, **controller_init_kwargs):
        controller_init_kwargs["failure_policy"] = _RecurringErrorsFinal(self.run_config.failure_config)
        if not joins_cluster():
            controller_init_kwargs["scaling_policy"] = _NoAutoscaler(self.scaling_config)
        controller_init_kwargs["callbacks"] = [
            c for c in controller_init_kwargs["callbacks"] if type(c).__name__ not in _NOT_NEEDED
        ]
        return super()._initialize_and_run_controller(**controller_init_kwargs)


@dataclass(frozen=True)
class Progress:
    """Where rank 0 counts its epochs for a driver's progress display: ``counter.add.remote(key)``. Only progress:
    a counter that is gone (its node died) never fails the run."""

    counter: Any  # a Ray actor handle with an ``add(key)`` method
    key: str

    def tick(self) -> None:
        try:
            self.counter.add.remote(self.key)
        except Exception as e:  # noqa: BLE001  (progress must not fail training)
            log.debug("progress counter unavailable: %s", describe(e))


OUTBOX_KEY = "outbox"  # in a checkpoint's state: the records not sent yet, sent by the group that resumes from it


class EpochReporter:
    """Per epoch: metrics to MLflow (rank 0; names prefixed with ``prefix``, e.g. a KD baseline's ``teacher_``)
    through an :class:`~adaskip.tracking.outbox.Outbox`, so training never waits on the tracking server; a tick to
    ``progress``; then metrics and rank 0's checkpoint state, with the records not sent yet, to ``api``
    (``ray.train`` in a Train worker, ``ray.tune`` in an in-process Tune trial). ``resume``: the checkpoint state
    this group resumes from, whose records not sent yet it sends first."""

    def __init__(
        self,
        tracking: Optional[TrackingTarget],
        rank: int,
        api: ModuleType = ray.train,
        prefix: str = "",
        progress: Optional[Progress] = None,
        resume: Optional[dict[str, Any]] = None,
    ) -> None:
        self.tracking, self.rank, self.api, self.prefix, self.progress = tracking, rank, api, prefix, progress
        self.outbox = None
        nodes = _worker_nodes()  # every rank takes part (a collective)
        if tracking is not None and rank == 0:
            from ..tracking.outbox import Outbox

            self.outbox = Outbox(tracking.uri, (resume or {}).get(OUTBOX_KEY) or (), experiment=tracking.experiment)
            # where the run trained, over every (re)started worker group: on a cluster, which nodes took part
            self.outbox.union_tag(tracking.run_id, NODES_TAG, nodes)

    def __call__(self, metrics: dict[str, float], state: Optional[dict[str, Any]]) -> None:
        from ..models.file import save_atomic

        if self.outbox is not None:
            # A group killed after logging an epoch but before Ray recorded that epoch's checkpoint makes the
            # restarted group train the epoch again: the outbox keeps the values first logged (``once``).
            named = {self.prefix + k: v for k, v in metrics.items()}
            self.outbox.metrics(self.tracking.run_id, named, int(metrics["epoch"]), once=self.prefix + "epoch")
        if self.progress is not None and self.rank == 0:
            self.progress.tick()
        if state is None:
            self.api.report(metrics)
            return
        if self.outbox is not None:
            state = {**state, OUTBOX_KEY: self.outbox.pending()}
        if self.api is not ray.train:  # an in-process Tune trial: its checkpoint is on this node's disk
            with tempfile.TemporaryDirectory() as tmp:
                save_atomic(state, Path(tmp) / STATE_FILE)
                self.api.report(metrics, checkpoint=self.api.Checkpoint.from_directory(tmp))
            return
        # Uploaded by Ray Train in a thread of its own while the next epoch trains, patiently while the storage does
        # not answer; Ray Train removes the local copy once uploaded and records a checkpoint only then, in order.
        tmp = tempfile.mkdtemp(prefix="adaskip-checkpoint-")
        save_atomic(state, Path(tmp) / STATE_FILE)
        self.api.report(
            metrics,
            checkpoint=self.api.Checkpoint.from_directory(tmp),
            checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
            checkpoint_upload_fn=upload_patiently,
        )

    def finish(self, wait: float = 2.0) -> list:
        """At the end of training: wait up to ``wait`` seconds for the records to be sent; returns those not sent
        (the last checkpoint keeps them too: the stage's Tracker sends them, see ``Tracker.hand_on``)."""
        return self.outbox.finish(wait) if self.outbox is not None else []


def upload_patiently(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
    """Ray Train's own upload of ``checkpoint`` to the run's storage (as ``name``), tried again while the storage does
    not answer (an object store down), up to ``ADASKIP_STORAGE_WAIT_S`` (600 s). A storage that answers and still
    fails the upload (no space, no permission) fails it at once."""
    import time

    storage = ray.train.get_context().get_storage()
    deadline, said = time.monotonic() + float(os.environ.get(STORAGE_WAIT_ENV, 600)), None
    while True:
        try:
            persisted = storage.persist_current_checkpoint(checkpoint, name)
        except (OSError, RuntimeError) as e:
            if _answers(storage.storage_filesystem, storage.experiment_fs_path) or time.monotonic() > deadline:
                raise
            if said is None:
                said = time.monotonic()
                log.warning("the run's storage does not answer: checkpoint %s waits, training goes on [%s]", name, e)
            time.sleep(5)
            continue
        if said is not None:
            log.warning("the run's storage is back after %.0f s: checkpoint %s uploaded", time.monotonic() - said, name)
        return persisted


def _answers(fs, path: str) -> bool:
    """Whether storage ``fs`` answers a listing of ``path`` (a failure there is then not an outage)."""
    try:
        fs.get_file_info(path)
        return True
    except OSError:
        return False


def _worker_nodes() -> list[str]:
    """The Ray node ids of every rank of this worker group (one gather, at start)."""
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not dist.is_available() or not dist.is_initialized():
        return [node]
    nodes: list = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return nodes


STORAGE_WAIT_ENV = "ADASKIP_STORAGE_WAIT_S"  # how long a restarted group waits for storage that does not answer


def latest_state(api: ModuleType = ray.train) -> Optional[dict[str, Any]]:
    """The state of ``api``'s latest checkpoint of this run (after a restart or a re-run), or None. A checkpoint that
    cannot be read because its storage does not answer (an object store down) is waited for, up to
    ``ADASKIP_STORAGE_WAIT_S`` (600 s), instead of failing the run as a corrupt file would."""
    import time

    from ..models.file import CheckpointError, read_torch_file  # here: Tune trial drivers import this without timm

    ckpt = api.get_checkpoint()
    if ckpt is None:
        return None
    deadline, said = time.monotonic() + float(os.environ.get(STORAGE_WAIT_ENV, 600)), False
    while True:
        try:
            with ckpt.as_directory() as d:
                return read_torch_file(Path(d) / STATE_FILE, "Ray Train checkpoint state")
        except (CheckpointError, OSError):
            if _answers(ckpt.filesystem, ckpt.path) or time.monotonic() > deadline:
                raise
            if not said:
                log.warning("the checkpoint's storage does not answer: waiting for it to resume from %s", ckpt.path)
                said = True
            time.sleep(5)


@dataclass(frozen=True)
class Alone:
    """What a baseline run trains (see ``FitMode``): sub-network ``skip`` alone, with CE, or distilled from a
    teacher whose model file (``{"spec", "state_dict"}``) is in Ray's object store at ``teacher_ref``, taking
    ``teacher``'s path through it."""

    skip: str
    teacher: Optional[str] = None
    teacher_ref: Any = None  # a ray.ObjectRef of the teacher's model file

    def fit_mode(self, params: Params, device: Any):
        """The FitMode for ``fit`` in this worker, the teacher (if any) loaded on ``device``."""
        import functools

        from ..models.file import build_from_spec, load_state
        from ..training import FitMode
        from ..training.loop import memory_format

        if self.teacher is None:
            return FitMode(alone=self.skip)
        file = ray.get(self.teacher_ref)
        net = build_from_spec(file["spec"])
        load_state(net, file["state_dict"], f"teacher {self.teacher}")
        net = net.to(device, memory_format=memory_format(params, net)).eval()
        return FitMode(alone=self.skip, teacher=functools.partial(net, skip=self.teacher))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    import torch

    from ..training import SELF_DISTILLATION, WorkerEnv, fit  # here, not at the top: Tune trial drivers need no timm

    params: Params = config["params"]  # validated by the driver (a frozen pydantic model pickles as it is)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    resume = latest_state()
    epochs = config.get("epochs") or params.train.epochs
    label = config.get("label") or f"{ctx.get_experiment_name()}: "
    if resume is not None and rank == 0:  # which run, from where: a study says it per cell
        log.info("%sresumes after epoch %d of %d (its latest checkpoint)", label, int(resume["epoch"]) + 1, epochs)
    device = get_device()
    alone: Optional[Alone] = config.get("alone")
    reporter = EpochReporter(
        config.get("tracking"),
        rank,
        prefix=config.get("prefix", ""),
        progress=config.get("progress"),
        resume=resume,
    )
    env = WorkerEnv(
        rank=rank,
        world_size=world,
        device=device,
        wrap=lambda m: prepare_model(m, parallel_strategy_kwargs={"find_unused_parameters": True}),
        report=reporter,
        resume_state=resume,
        label=config.get("label", ""),
    )
    fit(params, env, epochs=epochs, mode=alone.fit_mode(params, device) if alone else SELF_DISTILLATION)
    reporter.finish()


def worker_resources(train: TrainParams) -> dict[str, float]:
    """What one Ray Train worker asks: one GPU with ``train.use_gpu``, else ``train.cpus_per_worker`` CPUs."""
    return {"GPU": 1.0} if train.use_gpu else {"CPU": train.cpus_per_worker}


def worker_threads(train: TrainParams) -> int:
    """The torch threads of a worker on the CPU: the CPUs it holds, at least one."""
    return max(1, round(train.cpus_per_worker))


def make_trainer(
    params: Params,
    storage: Storage,
    name: str,
    tracking: Optional[TrackingTarget] = None,
    epochs: Optional[int] = None,
    workers: Optional[int] = None,
    callbacks: tuple = (),
    alone: Optional[Alone] = None,
    prefix: str = "",
    progress: Optional[Progress] = None,
    label: str = "",
) -> TorchTrainer:
    """A TorchTrainer whose ``(storage, name)`` is deterministic, so re-running resumes it, and which does not
    retry recurring errors. ``alone``: a baseline's one sub-network (default: self-distillation of them all);
    ``prefix``: before every metric name logged to MLflow; ``progress``: where rank 0 counts its epochs;
    ``label``: before each epoch line."""
    t = params.train
    n = workers or t.workers
    os.environ.setdefault(POLL_ENV, POLL_S)
    config = {
        "params": params,
        "tracking": tracking,
        "epochs": epochs,
        "threads": worker_threads(t),
        "alone": alone,
        "prefix": prefix,
        "progress": progress,
        "label": label,
    }
    return _Trainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=n,
            use_gpu=t.use_gpu,
            resources_per_worker=worker_resources(t),
            placement_strategy=t.placement.upper(),
        ),
        torch_config=LoopbackTorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.filesystem,
            callbacks=list(callbacks),
            # Ray Train's own INFO lines (worker group starts, every report and checkpoint): only
            # with ADASKIP_VERBOSE=1; its log files under the Ray session keep them all the same
            logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # a finite controller limit: an unschedulable worker group fails instead of retrying forever
            failure_config=FailureConfig(max_failures=t.max_failures, controller_failure_limit=max(1, t.max_failures)),
        ),
    )


def run_training(
    params: Params, storage: Storage, name: str, tracking: Optional[TrackingTarget] = None, **kwargs
) -> tuple[dict[str, float], dict[str, Any]]:
    """Train with Ray Train; returns the final metrics and the final checkpoint state (model + spec, and the MLflow
    records not sent: see ``unsent``)."""
    try:
        result = make_trainer(params, storage, name, tracking, **kwargs).fit()
    except SystemExit:  # Ray Train's own Ctrl-C handler aborts the run, then calls sys.exit(0): not a success
        raise KeyboardInterrupt("Ray Train run aborted by Ctrl-C") from None
    except TrainingFailedError as e:
        if (cause := recurring_error(e)) is None:
            raise
        raise RecurringTrainingError(
            f"training failed and was not retried (every restart would fail the same way): {describe(cause)}"
        ) from None
    if result.error is not None:
        raise result.error
    from ..models.file import read_torch_file

    with result.checkpoint.as_directory() as d:
        state = read_torch_file(Path(d) / STATE_FILE, "Ray Train checkpoint state")
    return dict(result.metrics), state


def unsent(state: dict[str, Any]) -> list:
    """The MLflow records a checkpoint's worker group had not sent (removed from ``state``): for the driver's
    ``Tracker.hand_on``."""
    return state.pop(OUTBOX_KEY, None) or []
