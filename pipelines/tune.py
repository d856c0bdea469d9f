"""DVC stage `tune`: Ray Tune sweep (ASHA) over alpha, temperature and split points; writes the best config."""
import json

from adaskip.errors import AdaskipError
from adaskip.files import write_csv, write_json
from adaskip.stage import main, params_hash, remove_outputs, start_ray, storage, tracker

TRIALS, BEST, TRAINED = "results/tune_trials.csv", "results/best_config.json", "results/train_metrics.json"


def run(params, args) -> None:
    from adaskip.orchestration.tune import METRIC, run_sweep

    remove_outputs(TRIALS, BEST)
    mlflow = tracker(params)
    h = params_hash(params, "data", "model", "train", "tune")
    tags = {"adaskip.stage": "tune", "adaskip.params_hash": h}
    resume = mlflow.unfinished_run(tags)
    start_ray(params, mlflow.uri)
    with mlflow.run(f"tune-{h}", tags, run_id=resume) as parent:
        mlflow.log_params(parent, params.model_dump(mode="json", include={"tune"}))
        try:
            trials = run_sweep(params, storage(params), f"tune-{h}", mlflow.uri, params.mlflow.experiment, parent)
        finally:
            mlflow.end_leftovers(parent)
        ok = trials.dropna(subset=[METRIC])
        if ok.empty:
            raise AdaskipError(f"every trial failed: {trials.error.dropna().unique().tolist()}; see results in MLflow "
                               "(tune run's children) and lower train.lr or narrow tune.alpha")
        best = ok.loc[ok[METRIC].idxmax()]
        baseline = json.loads(open(TRAINED).read()).get(METRIC)
        result = {"alpha": float(best.alpha), "temperature": float(best.temperature), "split": json.loads(best.split),
                  "objective": float(best[METRIC]), "trial_id": str(best.trial_id), "trained_objective": baseline,
                  "failed_trials": int(trials[METRIC].isna().sum())}
        mlflow.log_metrics(parent, {"best_objective": result["objective"], "failed_trials": result["failed_trials"]})
        mlflow.log_table(parent, trials, "tune_trials.json")
        mlflow.log_dict(parent, result, "best_config.json")
        write_csv(trials, TRIALS)
        write_json(result, BEST)
    print(f"best of {len(trials)} trials: objective {result['objective']:.2f} (alpha={result['alpha']:.2f}, "
          f"T={result['temperature']:.2f}, split={result['split']}) -> {BEST}")


if __name__ == "__main__":
    main(__doc__, run)
