"""DVC stage `evaluate`: every sub-network on the test split in parallel Ray tasks; one MLflow child run each."""
from adaskip.files import write_csv
from adaskip.stage import main, remove_outputs, tracker

MODEL, GRID = "models/model.pt", "results/eval_grid.csv"


def run(params, args) -> None:
    from adaskip.orchestration import init_ray  # heavy imports after params are validated: bad input fails fast
    from adaskip.orchestration.grid import evaluate_parallel
    from adaskip.training import load_model

    remove_outputs(GRID)
    _, model_file = load_model(MODEL)  # rebuilt and loaded here: a wrong or corrupt file fails before Ray starts
    mlflow = tracker(params)
    init_ray()
    with mlflow.run("evaluate", {"adaskip.stage": "evaluate"}) as parent:
        grid = evaluate_parallel(model_file, params)
        for row in grid.itertuples(index=False):
            with mlflow.run(row.skip, {"skip": row.skip, "pareto": str(row.pareto)}, parent_run_id=parent) as child:
                mlflow.log_metrics(child, {k: getattr(row, k) for k in ("acc1", "acc5", "macs", "params", "latency_ms", "skipped_stages")})
        mlflow.log_table(parent, grid, "eval_grid.json")
        write_csv(grid, GRID)
    print(grid.to_string(index=False))


if __name__ == "__main__":
    main(__doc__, run)
