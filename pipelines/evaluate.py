"""DVC stage `evaluate`: every sub-network on the test split in parallel Ray tasks; one MLflow child run each.
Interrupted, it resumes: grid subtrees already evaluated for this model file and these params are kept."""
import hashlib
import shutil
from pathlib import Path

from adaskip.files import write_csv
from adaskip.stage import main, params_hash, ray_storage, remove_outputs, tracker

MODEL, GRID = "models/model.pt", "results/eval_grid.csv"


def run(params, args) -> None:
    from adaskip.orchestration import init_ray  # heavy imports after params are validated: bad input fails fast
    from adaskip.orchestration.grid import evaluate_parallel
    from adaskip.training import load_model

    remove_outputs(GRID)
    _, model_file = load_model(MODEL)  # rebuilt and loaded here: a wrong or corrupt file fails before Ray starts
    with open(MODEL, "rb") as f:  # finished subtrees are reused only for the same weights and evaluation params
        h = hashlib.sha256(hashlib.file_digest(f, "sha256").digest() + params_hash(params, "data", "evaluate").encode()).hexdigest()[:10]
    mlflow = tracker(params)
    tags = {"adaskip.stage": "evaluate", "adaskip.params_hash": h}
    resume = mlflow.unfinished_run(tags)
    init_ray()
    done_dir = Path(ray_storage()) / f"evaluate-{h}"
    with mlflow.run(f"evaluate-{h}", tags, run_id=resume) as parent:
        grid = evaluate_parallel(model_file, params, done_dir)
        for row in grid.itertuples(index=False):
            cell = {"skip": row.skip, "pareto": str(row.pareto)}  # a child left by an interrupted run is continued
            with mlflow.run(row.skip, cell, parent, mlflow.find_run(cell, parent)) as child:
                mlflow.log_metrics(child, {k: getattr(row, k) for k in ("acc1", "acc5", "macs", "params", "latency_ms", "skipped_stages")})
        mlflow.log_table(parent, grid, "eval_grid.json")
        write_csv(grid, GRID)
    shutil.rmtree(done_dir, ignore_errors=True)  # finished: nothing left to resume
    print(grid.to_string(index=False))


if __name__ == "__main__":
    main(__doc__, run)
