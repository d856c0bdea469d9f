"""What a Ray Train worker reports: its epochs to MLflow through an outbox and to a driver's progress display, its
checkpoints to the run's storage (uploaded in the background, patiently while the storage does not answer), and the
state it resumes from."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import ray.train
from ray.train import CheckpointUploadMode

from ..errors import describe

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
NODES_TAG = "adaskip.train_nodes"


@dataclass(frozen=True)
class TrackingTarget:
    """Where rank 0 logs: an absolute tracking URI, experiment and an existing run id."""

    uri: str
    experiment: str
    run_id: str


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


def unsent(state: dict[str, Any]) -> list:
    """The MLflow records a checkpoint's worker group had not sent (removed from ``state``): for the driver's
    ``Tracker.hand_on``."""
    return state.pop(OUTBOX_KEY, None) or []
