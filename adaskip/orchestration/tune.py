"""Ray Tune sweep over distillation weight, temperature and split points.

Each trial trains with the same loop as the ``train`` stage: with ``tune.workers >= 1`` inside a Ray Train
TorchTrainer (DDP across that many workers: what a cluster wants), with ``tune.workers: 0`` in the trial's own
process (no worker group to start: on a 2-core laptop that saves about a minute per trial).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import pandas as pd
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from ..config import Params
from ..console import verbose
from ..errors import describe
from .cluster import configure_ray_env
from .storage import Storage
from .reporting import STATE_FILE, EpochReporter, TrackingTarget, latest_state, unsent
from .train import make_trainer

if TYPE_CHECKING:
    from ..models import AdaptiveDepthNet  # trial drivers need not import timm

log = logging.getLogger(__name__)
METRIC = "objective"


def _trial_params(base: dict[str, Any], config: dict[str, Any]) -> Params:
    train = {k: config[k] for k in base["train"] if k in config}  # alpha, temperature and any extra dimension
    data = {**base, "train": {**base["train"], **train}, "model": {**base["model"], "split": config["split"]}}
    return Params.model_validate(data)


def _train_in_process(params: Params, epochs: int, tracking: TrackingTarget) -> list:
    """The training loop in this trial's process, reporting (and checkpointing) through Tune each epoch; returns the
    MLflow records not sent yet."""
    import torch

    from ..training import WorkerEnv, fit

    torch.set_num_threads(1)
    resume = latest_state(tune)
    reporter = EpochReporter(tracking, 0, tune, resume=resume)
    fit(params, WorkerEnv(report=reporter, resume_state=resume), epochs=epochs)
    return reporter.finish()


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares besides its hyperparameters. Tune persists it with the experiment (each
    trial's params.pkl): addresses and names only, no credential; a trial opens the storage with its own."""

    uri: str  # the tracking server's address (its login stays in the environment)
    experiment: str
    parent_run_id: str
    epochs: int
    workers: int
    storage_uri: str
    group: Optional[str] = None  # the DVC experiment the trial runs are tagged with (Tracker's group)
    experiment_id: Optional[str] = None  # known: a trial starts while the tracking server does not answer


def _trial(config: dict[str, Any]) -> None:
    """Tune trial driver: train with this trial's hyperparameters, in its own MLflow child run."""
    from ..tracking import FAILED, FINISHED, Tracker

    ctx = tune.get_context()
    params = _trial_params(config["base"], config)
    s: TrialSetup = config["setup"]
    tracker = Tracker(s.uri, s.experiment, s.group, s.experiment_id)
    tags = {"trial_id": ctx.get_trial_id()}
    run_id = tracker.find_run(tags, s.parent_run_id)  # a resumed sweep continues its interrupted trials' runs
    run_id = (
        tracker.reopen(run_id) if run_id else tracker.start_run(f"trial-{ctx.get_trial_id()}", tags, s.parent_run_id)
    )
    tracker.log_params(
        run_id, {**{k: v for k, v in config.items() if k not in ("base", "setup")}, "workers": s.workers}
    )
    target = TrackingTarget(s.uri, s.experiment, run_id)
    try:
        if s.workers == 0:
            tracker.hand_on(_train_in_process(params, s.epochs, target))
        else:
            configure_ray_env()  # this trial drives a Ray Train run of its own (its controller reads them)
            result = make_trainer(
                params,
                Storage(s.storage_uri),
                f"train-{ctx.get_trial_id()}",
                target,
                epochs=s.epochs,
                workers=s.workers,
                callbacks=(TuneReportCallback(),),
            ).fit()
            if result.error is not None:
                raise result.error
            if result.checkpoint is not None:  # what its last worker group had not sent
                from ..models.file import read_torch_file

                with result.checkpoint.as_directory() as d:
                    tracker.hand_on(unsent(read_torch_file(Path(d) / STATE_FILE, "Ray Train checkpoint state")))
        tracker.end_run(run_id, FINISHED)
    except Exception as e:  # a stopped trial (SystemExit) is ended by _close_trial_runs, per Tune's verdict
        tracker.set_tags(run_id, {"error": describe(e)})
        tracker.end_run(run_id, FAILED)
        raise
    finally:  # what the tracking server did not take is kept in the run storage for the next stage to send
        tracker.close(Storage(s.storage_uri), wait=10)


class TrialLines(tune.Callback):
    """One line per ended trial (Tune prints nothing at verbose 0, and a sweep runs for minutes): what it tried and
    what it reached. Progress only: an error here is logged at debug level and never fails the sweep."""

    def __init__(self, total: int) -> None:
        self.total, self.ended = total, 0

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, "failed")

    def _line(self, trial, verdict: str) -> None:
        try:
            self.ended += 1
            cfg, last = trial.config, trial.last_result or {}
            reached = f"{METRIC} {last[METRIC]:.2f}" if METRIC in last else "no result"
            log.info(
                "tune: trial %d/%d %s: alpha %.2f, T %.2f, split %s -> %s after %d epoch(s)",
                self.ended,
                self.total,
                verdict,
                cfg["alpha"],
                cfg["temperature"],
                cfg["split"],
                reached,
                last.get("training_iteration", 0),
            )
        except Exception:  # noqa: BLE001 (progress only)
            log.debug("tune: no line for trial %s", getattr(trial, "trial_id", "?"), exc_info=True)


def _concurrency(params: Params) -> int:
    """Trials at once: as many as the cluster's CPUs fit (a trial's workers, or one process, plus its driver)."""
    t = params.tune
    if t.max_concurrent_trials:
        return t.max_concurrent_trials
    per_trial = max(1, t.workers) * params.train.cpus_per_worker + 0.1
    return max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))


def search_space(params: Params, net: Optional[AdaptiveDepthNet] = None) -> dict[str, Any]:
    """alpha, temperature and split: a search dimension for each key params.yaml leaves null (``Params.swept``), the
    value it fixes for the others (a constant, never searched)."""
    from ..build import tune_splits  # here: trial drivers need not import timm

    t, swept = params.tune, params.swept()
    splits = tune_splits(params, net) if "model.split" in swept else None
    return {
        "alpha": tune.uniform(*t.alpha) if "train.alpha" in swept else params.train.alpha,
        "temperature": tune.uniform(*t.temperature) if "train.temperature" in swept else params.train.temperature,
        "split": tune.choice(splits) if splits else params.model.split,
    }


def run_sweep(
    params: Params,
    storage: Storage,
    name: str,
    uri: str,
    experiment: str,
    parent_run_id: str,
    space: Optional[dict[str, Any]] = None,
    net: Optional[AdaptiveDepthNet] = None,
    group: Optional[str] = None,
    experiment_id: Optional[str] = None,
) -> pd.DataFrame:
    """Run the sweep (resuming an interrupted one with the same name); one row per trial. ``net``: params.model
    already built (the candidate splits follow its stage depths; default: built here).

    ``space`` adds or replaces search dimensions; keys naming a ``train`` parameter (``lr``, ``top_k``, ...)
    override it in each trial, e.g. ``{"lr": tune.loguniform(1e-3, 1e-1)}``.
    """
    t = params.tune
    space = {
        **search_space(params, net),
        "base": params.model_dump(mode="json"),
        "setup": TrialSetup(uri, experiment, parent_run_id, t.epochs, t.workers, storage.uri, group, experiment_id),
        **(space or {}),
    }
    tuner = _tuner(params, storage, name, space)
    table = trials_table(_quietly(tuner.fit))
    _close_trial_runs(table, space["setup"], storage)
    return table


def _tuner(params: Params, storage: Storage, name: str, space: dict[str, Any]) -> tune.Tuner:
    """The sweep's Tuner: ASHA over ``space``, seeded, as many trials at once as the cluster fits; the interrupted
    sweep of the same name restored instead (its finished trials kept)."""
    t = params.tune
    # In-process trials hold their CPUs themselves; Train trials only drive and leave CPUs to their workers.
    driver = {"cpu": params.train.cpus_per_worker} if t.workers == 0 else {"cpu": 0.1}
    trainable = tune.with_resources(_trial, driver)
    fs, path = storage.filesystem, f"{storage.path}/{name}"
    concurrent = _concurrency(params)
    tune_config = tune.TuneConfig(
        metric=METRIC,
        mode="max",
        num_samples=t.num_samples,
        reuse_actors=True,  # a finished trial's process takes the next one: torch and timm are imported once per slot
        scheduler=ASHAScheduler(
            time_attr="training_iteration", max_t=t.epochs, grace_period=min(t.grace_period, t.epochs)
        ),
        # BasicVariantGenerator ignores TuneConfig.max_concurrent_trials: give it the limit itself.
        search_alg=tune.search.BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrent),
    )
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        log.info("resuming the sweep at %s (finished trials are kept)", storage.child(name))
        return tune.Tuner.restore(path, trainable, resume_errored=True, restart_errored=False, storage_filesystem=fs)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=fs,
            verbose=1 if verbose() else 0,  # no per-trial tables: one line per ended trial instead
            callbacks=[TrialLines(t.num_samples)],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _quietly(fit: Callable[[], Any]) -> Any:
    """``fit()`` without Tune's experiment header: its default output engine prints the header and paths at any
    verbosity, the legacy one at verbose=0 nothing (RAY_AIR_NEW_OUTPUT is read when fit starts)."""
    quiet = {} if verbose() or "RAY_AIR_NEW_OUTPUT" in os.environ else {"RAY_AIR_NEW_OUTPUT": "0"}
    os.environ.update(quiet)
    try:
        return fit()
    finally:
        for k in quiet:
            os.environ.pop(k, None)


def _close_trial_runs(table: pd.DataFrame, setup: "TrialSetup", storage: Storage) -> None:
    """End the MLflow run of every trial per Tune's verdict: a trial stopped at max_t or pruned by ASHA never
    returns from its last report, so its own ``finally`` cannot be relied on. A run left KILLED by an interrupted
    sweep whose trial had finished (or was resumed) gets its verdict too. Sent when the tracking server answers."""
    from ..tracking import FAILED, FINISHED, Tracker

    tracker = Tracker(setup.uri, setup.experiment, experiment_id=setup.experiment_id)
    parent_run_id, epochs = setup.parent_run_id, setup.epochs
    for row in table.itertuples(index=False):
        trial = {"trial_id": str(row.trial_id)}
        if isinstance(row.error, str):  # pandas turns a missing error into NaN
            tracker.end_found(trial, parent_run_id, FAILED, {"error": row.error})
        else:
            done = int(row.epochs or 0)
            tracker.end_found(trial, parent_run_id, FINISHED, {"stopped_early": done < epochs, "epochs_done": done})
    tracker.close(storage, wait=10)  # what is left is kept, for the next stage (the stage's own records follow)


def trials_table(grid: tune.ResultGrid) -> pd.DataFrame:
    """One row per trial: its hyperparameters, last metrics and error (if it failed)."""
    rows = []
    for r in grid:
        cfg, m = r.config or {}, r.metrics or {}
        dims = {k: (json.dumps(v) if k == "split" else v) for k, v in cfg.items() if k not in ("base", "setup")}
        rows.append(
            {
                "trial_id": m.get("trial_id", r.path and Path(r.path).name),
                **dims,
                "objective": m.get(METRIC),
                "val_acc_super": m.get("val_acc_super"),
                "val_acc_base": m.get("val_acc_base"),
                "epochs": m.get("training_iteration"),
                "error": None if r.error is None else describe(r.error),
            }
        )
    return pd.DataFrame(rows)
