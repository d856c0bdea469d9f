"""Ray Train runs of adaskip: the worker's entry point (distributed self-distillation, or a baseline alone), what a
worker asks, and the trainer factory with per-epoch checkpoints and resume (what workers report: :mod:`.reporting`;
Ray Train's behaviour adaskip changes: :mod:`.raytrain`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import ray.train
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchTrainer, get_device, prepare_model

from ..config import Params, TrainParams
from ..console import verbose
from ..errors import describe
from .raytrain import POLL_ENV, POLL_S, LoopbackTorchConfig, RecurringTrainingError, Trainer, recurring_error
from .reporting import EpochReporter, Progress, TrackingTarget, latest_state
from .storage import Storage

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
NODES_TAG = "adaskip.train_nodes"


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
    return Trainer(
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
