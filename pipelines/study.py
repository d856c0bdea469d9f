"""Study stage `cells`: every variant x seed of a study file as Ray tasks, each trained and evaluated on the test
split (adaptive-depth variants over all 2^S configurations, baselines at their own). Re-running an interrupted
study trains only the cells that had not finished."""
from pathlib import Path

from adaskip.files import write_csv
from adaskip.stage import main, ray_storage, remove_outputs, tracker
from adaskip.study import cells, load_study


def configure(parser) -> None:
    parser.add_argument("--study", default="studies/ablation/study.yaml", help="study file (default: %(default)s); "
                        "its results go to results/ beside it")


def run(params, args) -> None:
    spec = load_study(args.study)
    todo = cells(spec, params)  # every variant's params validated before Ray starts
    out = Path(args.study).parent / "results" / "cells.csv"
    remove_outputs(out)
    from adaskip.orchestration import init_ray  # heavy imports after the study is validated
    from adaskip.orchestration.study import run_cells

    mlflow = tracker(params)
    tags = {"adaskip.stage": "study", "adaskip.study": spec.name}
    resume = mlflow.unfinished_run(tags)
    init_ray()
    with mlflow.run(f"study-{spec.name}", tags, run_id=resume) as parent:
        mlflow.log_params(parent, {"study": spec.model_dump(mode="json")})
        try:
            rows = run_cells(todo, Path(ray_storage()) / f"study-{spec.name}", mlflow, parent, spec.cpus_per_cell)
        finally:
            mlflow.end_leftovers(parent)
        write_csv(rows, out)
    print(f"{len(todo)} cells of study {spec.name!r} -> {out}")


if __name__ == "__main__":
    main(__doc__, run, configure)
