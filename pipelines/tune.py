"""DVC stage `tune`: Ray Tune sweep (ASHA) over the keys params.yaml leaves null (train.alpha, train.temperature,
model.split), each trial scored on the validation split; writes the best configuration, which the `train` stage then
trains for its full epochs. A key set in params.yaml is fixed: never searched, never replaced. With `tune.enabled:
false`, or nothing left to search, it runs no sweep and records only that."""

import json
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from adaskip.config import SWEPT, TUNED, params_hash
from adaskip.errors import AdaskipError
from adaskip.files import write_csv, write_json
from adaskip.stage import StageResult, main, remove_outputs, start_ray, storage, tracker

TRIALS, BEST = "results/tune_trials.csv", "results/best_config.json"


@dataclass(frozen=True)
class Tuned(StageResult):
    """The configuration train trains: the sweep's best (``objective`` its score), or params.yaml's (no sweep)."""

    alpha: float
    temperature: float
    split: list[int]
    objective: Optional[float]  # None: no sweep (see ``swept``)
    trials: int
    swept: list[str]  # the keys the sweep searched (the others are params.yaml's); empty: no sweep
    enabled: bool = True  # tune.enabled

    def summary(self) -> str:
        chosen = f"alpha {self.alpha:.2f}, T {self.temperature:.2f}, split {self.split}"
        if not self.swept:
            why = "tune.enabled: false" if not self.enabled else f"{', '.join(SWEPT)} fixed in params.yaml"
            return f"no sweep ({why}): train trains {chosen}"
        fixed = [k for k in SWEPT if k not in self.swept]
        return (
            f"best of {self.trials} trials: val objective {self.objective:.2f} ({chosen}"
            + (f"; {', '.join(fixed)} fixed in params.yaml" if fixed else "")
            + f") -> {BEST}"
        )


def run(params, args) -> Tuned:
    from adaskip.build import check_model

    net = check_model(params, splits=True, source=args.params)  # the model and each listed tune.splits variant
    remove_outputs(TRIALS, BEST)
    swept = params.swept() if params.tune.enabled else []
    if not swept:  # nothing to choose: train trains params.yaml's values (a null one at its default)
        write_csv(pd.DataFrame(columns=["trial_id", "alpha", "temperature", "split", "objective"]), TRIALS)
        write_json({"source": "params.yaml", "objective": None, "swept": []}, BEST)
        t = params.settled().train
        return Tuned(t.alpha, t.temperature, list(net.split), None, 0, [], params.tune.enabled)
    from adaskip.orchestration.tune import METRIC, run_sweep

    tracking = tracker(params)
    h = params_hash(params, "data", "model", "train", "tune")
    tags = {"adaskip.stage": "tune", "adaskip.params_hash": h}
    resume = tracking.unfinished_run(tags)
    store = storage(params)
    start_ray(params, tracking.uri, store)
    name = f"tune {', '.join(k.split('.')[1] for k in swept)} ({tracking.group})"  # what it sweeps
    with tracking.run(name, tags, run_id=resume) as parent:
        tracking.log_params(parent, params.model_dump(mode="json", include={"tune"}))
        try:
            trials = run_sweep(
                params,
                store,
                f"tune-{h}",
                tracking.uri,
                params.mlflow.experiment,
                parent,
                net=net,
                group=tracking.group,
                experiment_id=tracking.experiment_id,
            )
        finally:
            tracking.end_leftovers(parent)
        ok = trials.dropna(subset=[METRIC])
        if ok.empty:
            raise AdaskipError(
                f"every trial failed: {trials.error.dropna().unique().tolist()}; see results in MLflow "
                "(tune run's children) and lower train.lr or narrow tune.alpha"
            )
        best = ok.loc[ok[METRIC].idxmax()]
        result = {
            "alpha": float(best.alpha),
            "temperature": float(best.temperature),
            "split": json.loads(best.split),
            "objective": float(best[METRIC]),
            "trial_id": str(best.trial_id),
            "source": TUNED,
            "epochs": params.tune.epochs,
            "failed_trials": int(trials[METRIC].isna().sum()),
            "swept": swept,
        }
        if result["split"] is None:  # tune.splits: null searched model.split only, itself null: the paper's rule
            result["split"] = list(net.split)
        tracking.log_metrics(parent, {"best_objective": result["objective"], "failed_trials": result["failed_trials"]})
        tracking.log_table(parent, trials, "tune_trials.json")
        tracking.log_dict(parent, result, "best_config.json")
        write_csv(trials, TRIALS)
        write_json(result, BEST)
    return Tuned(result["alpha"], result["temperature"], result["split"], result["objective"], len(trials), swept)


if __name__ == "__main__":
    main(__doc__, run)
