"""Ray Tune sweep over distillation weight, temperature and split points; each trial a Ray Train run."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from ..config import Params
from .train import TrackingTarget, make_trainer

log = logging.getLogger(__name__)
METRIC = "objective"


def _trial_params(base: dict[str, Any], config: dict[str, Any]) -> Params:
    data = {**base, "train": {**base["train"], "alpha": config["alpha"], "temperature": config["temperature"]},
            "model": {**base["model"], "split": config["split"]}}
    return Params.model_validate(data)


def _trial(config: dict[str, Any]) -> None:
    """Tune trial driver: one Ray Train run with this trial's hyperparameters, its own MLflow child run."""
    from ..tracking import FINISHED, Tracker

    ctx = tune.get_context()
    params = _trial_params(config["base"], config)
    s = config["setup"]
    tracker = Tracker(s["uri"], s["experiment"])
    tags = {"trial_id": ctx.get_trial_id()}
    run_id = tracker.find_run(tags, s["parent_run_id"]) or tracker.start_run(f"trial-{ctx.get_trial_id()}", tags, s["parent_run_id"])
    tracker.log_params(run_id, {"alpha": config["alpha"], "temperature": config["temperature"], "split": config["split"]})
    trainer = make_trainer(params, s["storage_path"], f"train-{ctx.get_trial_id()}",
                           TrackingTarget(s["uri"], s["experiment"], run_id), epochs=s["epochs"],
                           workers=s["workers"], callbacks=(TuneReportCallback(),))
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        tracker.end_run(run_id, FINISHED)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise


def run_sweep(params: Params, storage_path: str, name: str, uri: str, experiment: str, parent_run_id: str) -> pd.DataFrame:
    """Run the sweep (resuming an interrupted one with the same name); one row per trial."""
    t = params.tune
    space = {
        "alpha": tune.uniform(*t.alpha),
        "temperature": tune.uniform(*t.temperature),
        "split": tune.choice(t.splits) if t.splits else params.model.split,
        "base": params.model_dump(mode="json"),
        "setup": {"uri": uri, "experiment": experiment, "parent_run_id": parent_run_id, "epochs": t.epochs,
                  "workers": t.workers, "storage_path": str(Path(storage_path).resolve())},
    }
    cpus = ray.cluster_resources().get("CPU", 1)
    per_trial = t.workers * params.train.cpus_per_worker + 0.1
    concurrent = t.max_concurrent_trials or max(1, int(cpus // per_trial))
    trainable = tune.with_resources(_trial, {"cpu": 0.1})
    path = Path(storage_path).resolve() / name
    tune_config = tune.TuneConfig(
        metric=METRIC, mode="max", num_samples=t.num_samples, max_concurrent_trials=concurrent,
        scheduler=ASHAScheduler(time_attr="training_iteration", max_t=t.epochs, grace_period=min(t.grace_period, t.epochs)),
        search_alg=tune.search.BasicVariantGenerator(random_state=t.seed))
    if tune.Tuner.can_restore(str(path)):
        log.info("resuming the sweep at %s", path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True, restart_errored=False)
    else:
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_config,
                           run_config=tune.RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                                                     failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    rows = []
    for r in grid:
        cfg = r.config or {}
        m = r.metrics or {}
        rows.append({"trial_id": m.get("trial_id", r.path and Path(r.path).name), "alpha": cfg.get("alpha"),
                     "temperature": cfg.get("temperature"), "split": str(cfg.get("split")),
                     "objective": m.get(METRIC), "val_acc_super": m.get("val_acc_super"),
                     "val_acc_base": m.get("val_acc_base"), "epochs": m.get("training_iteration"),
                     "error": None if r.error is None else str(r.error).splitlines()[0][:300]})
    return pd.DataFrame(rows)
