"""Study stage `cells`: a study's variants, each over all its seeds, as Ray Train runs (one per variant x seed, as
many at once as the cluster fits), each trained and evaluated on the test split (adaptive-depth variants over all
2^S configurations, baselines at their own). The study's dvc.yaml runs it once per variant (a DVC matrix stage), and
DVC runs those stages one at a time: so the first stage also starts the cells of every other variant whose results
are out of date, all at once on the cluster, and the later stages find theirs finished in the study's cache.
Re-running an interrupted stage resumes each unfinished cell from its latest epoch checkpoint."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from adaskip.files import write_csv
from adaskip.stage import StageResult, main, remove_outputs, start_ray, storage, tracker
from adaskip.ablation.cache import collect, run_ahead, unfinished
from adaskip.ablation.spec import cells, cells_dir, cells_file, load_study, mlflow_tags


def configure(parser) -> None:
    parser.add_argument(
        "--study",
        default="studies/ablation/study.yaml",
        help="study file (default: %(default)s); results go to results/cells/<variant>.csv beside it",
    )
    parser.add_argument(
        "--variant",
        action="append",
        help="write this variant's results (repeatable; default: every variant of the study)",
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="run only the named variants' cells (default: also "
        "start every other variant whose results file does not hold its current cells)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the plan for the attached cluster (cells, "
        "resources per cell, how many run at once, waves) and exit; exit 2 if a cell can never fit",
    )


@dataclass(frozen=True)
class Planned(StageResult):
    line: str  # the plan (--plan), or that nothing is left to run

    def summary(self) -> str:
        return self.line


@dataclass(frozen=True)
class Cells(StageResult):
    rows: dict[str, pd.DataFrame]  # per variant written: the rows of its results/cells/<variant>.csv
    study: str
    cells: int  # of the variants written
    ahead: int  # cells of later variants' stages run ahead
    out: Path  # the results/cells folder
    collected: bool = False  # every cell was in the study's cache: nothing ran

    def summary(self) -> str:
        extra = f", and {self.ahead} cells of later stages ahead" if self.ahead else ""
        cached = ", all in the study's cache already" if self.collected else ""
        return f"{self.cells} cells of study {self.study!r} ({', '.join(self.rows)}){extra}{cached} -> {self.out}"


def run(params, args) -> Planned | Cells:
    spec = load_study(args.study)
    names = args.variant or list(spec.variants)
    every = cells(spec, params)  # every variant's params validated and its model checked before Ray starts
    outs = {v: cells_file(args.study, v) for v in names}
    ahead = (
        [] if args.alone else run_ahead(every, {v: cells_file(args.study, v) for v in spec.variants if v not in names})
    )
    todo = [c for c in every if c.variant in names] + ahead
    store = storage(params)
    cache = store.child(f"study-{spec.name}")
    left = unfinished(todo, cache)
    if args.plan:
        if not left:
            return Planned("nothing to run: every cell is in the study's cache")
        from adaskip.orchestration.cells import cluster_nodes, plan_cells

        start_ray(params, tracker(params).uri, store)
        return Planned(plan_cells(left, cluster_nodes()).line() + f" ({len(todo) - len(left)} cells already done)")
    remove_outputs(*outs.values())
    # a stage whose cells an earlier stage ran ahead only collects them: no Ray, no MLflow
    rows = _run(params, spec, todo, ahead, cache, store) if left else collect(todo, cache)
    written = {v: rows[rows.variant == v] for v in outs}
    for variant, out in outs.items():
        write_csv(written[variant], out)
    return Cells(written, spec.name, len(todo) - len(ahead), len(ahead), cells_dir(args.study), collected=not left)


def _run(params, spec, todo: list, ahead: list, cache, store) -> pd.DataFrame:
    """Run the unfinished cells of ``todo`` on Ray under the study's MLflow parent run; returns every cell's rows."""
    from adaskip.orchestration.cells import run_cells

    tracking = tracker(params)
    start_ray(params, tracking.uri, store)
    tags = mlflow_tags(spec, params)
    with tracking.run(f"study-{spec.name}", tags, run_id=tracking.find_run(tags)) as parent:
        # what every cell shares (the parent's key); each cell logs its own full params
        tracking.log_params(
            parent,
            {
                "study": spec.model_dump(mode="json", include={"name", "epochs"}),
                **params.model_dump(mode="json", include={"data", "model", "train", "evaluate"}),
            },
        )
        try:
            return run_cells(todo, cache, tracking, parent, optional={c.variant for c in ahead})
        finally:
            tracking.end_leftovers(parent)


if __name__ == "__main__":
    main(__doc__, run, configure)
