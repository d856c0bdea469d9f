"""DVC stage `train`: Ray Train distributed self-distillation for train.epochs of params.yaml's alpha, temperature
and split, each key left null there filled by the tune stage's choice (results/best_config.json); resumes an
interrupted run of the same params."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from adaskip.errors import AdaskipError
from adaskip.files import write_json
from adaskip.config import apply_tuned, params_hash
from adaskip.stage import StageResult, main, remove_outputs, start_ray, storage, tracker
from adaskip.tracking.views import GROUP_TAG

MODEL, METRICS, BEST = "models/model.pt", "results/train_metrics.json", "results/best_config.json"
# results/train_metrics.json while the tracking server does not answer: the version is registered once it does
PENDING = "pending: MLflow did not answer; adaskip sync (or the next stage) registers the model once it does"
DIAGNOSTICS = "results/diagnostics.json"  # final epoch's ratio_* and ratio.s<stage>.<m|s><block> (also in MLflow)


@dataclass(frozen=True)
class Trained(StageResult):
    metrics: dict[str, float]  # the final epoch's (results/train_metrics.json, diagnostics.json)
    trained_with: dict[str, Any]  # alpha, temperature, split
    epochs: int
    version: Optional[str]  # the registered model version, if any
    registered_model: Optional[str]
    pending: bool = False  # its registration waits for the tracking server

    def summary(self) -> str:
        m, w = self.metrics, self.trained_with
        return (
            f"val super {m['val_acc_super']:.1f} % base {m['val_acc_base']:.1f} % after {self.epochs} epochs "
            f"(alpha {w['alpha']:.2f}, T {w['temperature']:.2f}, split {w['split']}) -> {MODEL}"
            + (f", registered {self.registered_model} v{self.version}" if self.version else "")
            + (f", registration of {self.registered_model} pending" if self.pending else "")
        )


def _trained_with(params, built_split: list[int]) -> dict[str, Any]:
    """What a run trains, as its model file, train_metrics.json and registered version say it."""
    t = params.train
    return {
        "model": params.model.name,
        "data": params.data.name,
        "alpha": t.alpha,
        "temperature": t.temperature,
        "split": list(params.model.split or built_split),
        "epochs": t.epochs,
        "seed": t.seed,
    }


def _write_metrics(metrics: dict[str, Any], extra: dict[str, Any]) -> dict[str, float]:
    """train_metrics.json (the numbers and ``extra``) and diagnostics.json (the per-block residual ratios, Figure 3: a
    plain output, not DVC metrics, so `dvc exp show` stays narrow); returns the numbers."""
    numbers = {k: metrics[k] for k in sorted(metrics) if isinstance(metrics[k], (int, float))}
    write_json({**{k: v for k, v in numbers.items() if not k.startswith("ratio")}, **extra}, METRICS)
    write_json({k: v for k, v in numbers.items() if k.startswith("ratio")}, DIAGNOSTICS)
    return numbers


def run(params, args) -> Trained:
    from adaskip.build import check_model
    from adaskip.models.file import model_file, save_atomic
    from adaskip.orchestration.reporting import TrackingTarget, unsent
    from adaskip.orchestration.train import run_training
    from adaskip.tracking.views import run_name, trained_params

    net = check_model(params, source=args.params)  # the model can be built and run: once here, not in every worker
    remove_outputs(MODEL, METRICS, DIAGNOSTICS)
    if not Path(BEST).is_file():
        raise AdaskipError(
            f"{BEST} is missing: run the tune stage first (dvc repro runs it; tune.enabled: false "
            "passes params.yaml's alpha, temperature and split on)"
        )
    tracking = tracker(params)  # grouped by the experiment's params as set, before the sweep's choice fills them
    params = apply_tuned(params, json.loads(Path(BEST).read_text()), BEST)  # a key params.yaml sets is never replaced
    h = params_hash(params, "data", "model", "train")  # what is trained: the resume key
    trained_with = _trained_with(params, net.split)
    tags = {"adaskip.stage": "train", "adaskip.params_hash": h}
    resume = tracking.unfinished_run(tags)
    store = storage(params)
    start_ray(params, tracking.uri, store)
    with tracking.run(run_name("train", tracking.group, trained_with), tags, run_id=resume) as run_id:
        tracking.log_params(run_id, params.model_dump(mode="json", include={"data", "model", "train"}))
        tracking.log_dataset(run_id, params.data.model_dump(mode="json"), "training")
        metrics, state = run_training(
            params, store, f"train-{h}", TrackingTarget(tracking.uri, params.mlflow.experiment, run_id)
        )
        tracking.hand_on(unsent(state))
        trained_with["split"] = list(state["spec"]["split"])
        file = model_file(state, params.data.image_size, macs=state["macs"], metrics=metrics, trained_with=trained_with)
        logging.getLogger("adaskip.train").debug("saving the %s weights -> %s", file["weights"], MODEL)
        save_atomic(file, MODEL)
        tracking.log_artifact(run_id, MODEL, "model")
        # the MLflow Model (pyfunc, skip as an inference parameter), registered as a new version that says what it
        # trained and in which experiment
        version = tracking.log_model(
            run_id,
            MODEL,
            params.mlflow.registered_model,
            params.data.image_size,
            tags={**trained_params(trained_with), GROUP_TAG: tracking.group},
        )
        registered = {"registered_model_version": version} if version else {}
        if version is None and params.mlflow.registered_model and tracking.waiting():
            registered = {"registration": PENDING}
        numbers = _write_metrics(metrics, {"trained_with": trained_with, **registered})
    store.remove(f"train-{h}")  # finished: nothing left to resume
    return Trained(
        numbers,
        trained_with,
        params.train.epochs,
        version,
        params.mlflow.registered_model,
        "registration" in registered,
    )


if __name__ == "__main__":
    main(__doc__, run)
