"""Study stage `cells`: a study's variants, each over all its seeds, as Ray tasks (one per variant x seed), each
trained and evaluated on the test split (adaptive-depth variants over all 2^S configurations, baselines at their
own). The study's dvc.yaml runs it once per variant (a DVC matrix stage); re-running an interrupted stage trains
only the cells that had not finished."""
from pathlib import Path

from adaskip.files import write_csv
from adaskip.stage import main, ray_storage, remove_outputs, tracker
from adaskip.study import cells, cells_file, load_study, mlflow_tags


def configure(parser) -> None:
    parser.add_argument("--study", default="studies/ablation/study.yaml", help="study file (default: %(default)s); "
                        "results go to results/cells/<variant>.csv beside it")
    parser.add_argument("--variant", action="append", help="run this variant only (repeatable; default: every "
                        "variant of the study)")


def run(params, args) -> None:
    spec = load_study(args.study)
    names = args.variant or list(spec.variants)
    todo = cells(spec, params, variants=names)  # every variant's params validated before Ray starts
    outs = {v: cells_file(args.study, v) for v in names}
    remove_outputs(*outs.values())
    from adaskip.orchestration import init_ray  # heavy imports after the study is validated
    from adaskip.orchestration.study import run_cells

    mlflow = tracker(params)
    tags = mlflow_tags(spec, params)
    init_ray()
    with mlflow.run(f"study-{spec.name}", tags, run_id=mlflow.find_run(tags)) as parent:
        # what every cell shares (the parent's key); each cell logs its own full params
        mlflow.log_params(parent, {"study": spec.model_dump(mode="json", include={"name", "epochs"}),
                                   **params.model_dump(mode="json", include={"data", "model", "train", "evaluate"})})
        try:
            rows = run_cells(todo, Path(ray_storage()) / f"study-{spec.name}", mlflow, parent, spec.cpus_per_cell)
        finally:
            mlflow.end_leftovers(parent)
        for variant, out in outs.items():
            write_csv(rows[rows.variant == variant], out)
    print(f"{len(todo)} cells of study {spec.name!r} ({', '.join(names)}) -> {Path(args.study).parent / 'results' / 'cells'}")


if __name__ == "__main__":
    main(__doc__, run, configure)
