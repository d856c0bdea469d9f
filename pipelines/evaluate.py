"""DVC stage `evaluate`: every sub-network on the test split in parallel Ray tasks; one MLflow child run each.
results/eval_grid.csv has one row per sub-network (latency columns per batch size, the device and threads), and
results/latency.csv the same latencies in long form (skip x batch size x threads).
Interrupted, it resumes: grid subtrees already evaluated for this model file and these params are kept."""

import hashlib
import logging
from dataclasses import dataclass

import pandas as pd

from adaskip.config import params_hash
from adaskip.files import file_sha256, write_csv
from adaskip.stage import StageResult, main, remove_outputs, start_ray, storage, tracker

MODEL, GRID, LATENCY = "models/model.pt", "results/eval_grid.csv", "results/latency.csv"
METRICS = ("acc1", "acc5", "macs", "params", "latency_ms", "skipped_stages", "threads")


@dataclass(frozen=True)
class Evaluated(StageResult):
    grid: pd.DataFrame  # results/eval_grid.csv

    def summary(self) -> str:
        by_macs = self.grid.sort_values("macs")
        sup, base = by_macs.iloc[-1], by_macs.iloc[0]
        return (
            f"{len(self.grid)} sub-networks on the test split: super {sup.acc1:.1f} % base {base.acc1:.1f} % "
            f"({base.macs / sup.macs:.0%} of the MACs), {int(self.grid.pareto.sum())} on the Pareto front -> {GRID}"
        )


def run(params, args) -> Evaluated:
    from adaskip.evaluation.latency import latency_long
    from adaskip.evaluation.report import headline_metrics
    from adaskip.models.file import load_model
    from adaskip.orchestration.grid import evaluate_parallel
    from adaskip.select import aliases
    from adaskip.tracking import pareto_tags, skip_params, table
    from adaskip.tracking.views import CURVE, chart_url, curve_steps, run_name, trained_params, ui_base

    remove_outputs(GRID, LATENCY)
    _, model_file = load_model(MODEL)  # rebuilt and loaded here: a wrong or corrupt file fails before Ray starts
    trained_with = model_file.get("trained_with")  # what the file trained (not params.yaml: evaluate does not read it)
    sha = file_sha256(MODEL)  # finished subtrees are reused only for the same weights and evaluation params
    h = hashlib.sha256(bytes.fromhex(sha) + params_hash(params, "data", "evaluate").encode()).hexdigest()[:10]
    tracking = tracker(params)
    tags = {"adaskip.stage": "evaluate", "adaskip.params_hash": h}
    resume = tracking.unfinished_run(tags)
    store = storage(params)
    start_ray(params, tracking.uri, store)
    done = store.child(f"evaluate-{h}")
    with tracking.run(run_name("evaluate", tracking.group, trained_with), tags, run_id=resume) as parent:
        tracking.log_dataset(parent, params.data.model_dump(mode="json"), "evaluation")
        grid = evaluate_parallel(model_file, params, done)
        keys = METRICS + tuple(c for c in grid.columns if c.startswith(("latency_p50_ms_", "latency_p90_ms_")))
        for row in grid.to_dict("records"):
            cell = {"skip": row["skip"], "pareto": str(row["pareto"])}  # an interrupted run's child is continued
            with tracking.run(row["skip"], cell, parent, tracking.find_run(cell, parent)) as child:
                tracking.log_params(child, skip_params(row["skip"]))  # per-stage flags: plottable in the compare view
                tracking.log_metrics(child, {k: row[k] for k in keys})
                tracking.set_tags(child, {"device": row["device"]})
        # the parent says what it evaluated and how it came out; its curve overlays other evaluate runs' in a chart
        tracking.log_params(parent, trained_params(trained_with or {}))
        tracking.log_metrics(parent, headline_metrics(grid))
        tracking.log_curve(parent, CURVE, curve_steps(grid))
        latency = latency_long(grid)
        tracking.log_table(parent, grid, "eval_grid.json")
        tracking.log_table(parent, latency, "latency.json")
        if name := params.mlflow.registered_model:  # the version the train stage registered for this file: the grid
            wanted = aliases(grid)  # beside the served model (budgets), the aliases it is offered (see offer_aliases)
            told = tracking.evaluated(name, sha, parent, pareto_tags(grid), table(grid), wanted)
            if told:
                _log_aliases(name, wanted, *told, measured=_where(grid))
        write_csv(grid, GRID)
        write_csv(latency, LATENCY)
    done.remove()  # finished: nothing left to resume
    log = logging.getLogger("adaskip.evaluate")
    charts = chart_url(ui_base(tracking.uri), tracking.experiment_id, "evaluate")
    log.info("trade-off curves of every evaluate run: %s", charts)
    log.debug("\n%s", grid.to_string(index=False))  # every row: -v, or the CSV
    return Evaluated(grid)


def _where(grid: pd.DataFrame) -> str:
    """Whose latency chose @fastest-within-1pct: this machine's device and threads."""
    if "device" not in grid.columns:
        return "fewest MACs: the grid has no latency"
    threads = int(grid["threads"].iloc[0]) if "threads" in grid.columns else None
    return f"p50 on {grid['device'].iloc[0]}" + (f", {threads} thread{'s' * (threads != 1)}" if threads else "")


def _log_aliases(
    name: str, skips: dict[str, str], version: str, taken: dict[str, str], kept: dict[str, str], measured: str = ""
) -> None:
    """The aliases this version took (the fastest by ``measured``), and those another model keeps (only ``adaskip
    promote`` moves them)."""
    log = logging.getLogger("adaskip.evaluate")
    if taken:
        moved = ", ".join(f"@{a} -> {v} ({skips[a]})" for a, v in taken.items())
        log.info("%s version %s: %s%s", name, version, moved, f" (the fastest by the {measured})" if measured else "")
    if kept:
        held = ", ".join(f"@{a} (v{v})" for a, v in kept.items())
        log.info("%s v%s: %s kept by another model; `adaskip promote %s` moves them", name, version, held, version)


if __name__ == "__main__":
    main(__doc__, run)
