"""A study's cells (variant x seed) as Ray tasks: each trains in its own process, then evaluates its grid.

Ray schedules the cells on whatever cluster is attached (``RAY_ADDRESS``), ``cpus_per_cell`` each. A finished
cell's rows are kept under the study's cache folder, named by the hash of the cell's params, so re-running an
interrupted study trains only the cells that had not finished; a changed variant gets a new hash.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd
import ray
from tqdm.auto import tqdm

from ..errors import AdaskipError, describe
from ..files import write_csv
from ..study import Cell
from .grid import grid_accuracy
from .train import TrackingTarget

if TYPE_CHECKING:
    from ..tracking import Tracker

log = logging.getLogger(__name__)


def cell_hash(cell: Cell) -> str:
    spec = {"params": cell.params.model_dump(mode="json", exclude={"mlflow"}), "baseline": cell.baseline}
    if cell.teacher:  # only when set: hashes of cells without a teacher stay as they were
        spec["teacher"] = cell.teacher
    blob = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_cell(cell: Cell, tracker: Optional["Tracker"] = None, run_id: Optional[str] = None,
             threads: int = 1) -> pd.DataFrame:
    """Train one cell in this process (adaptive-depth: self-distillation; baseline: CE on its one sub-network, or
    KD from its teacher trained alone first), logging each epoch to ``run_id``, then evaluate it on the test
    split: every configuration, or the baseline's own. One row per configuration."""
    import torch

    from ..data import load_splits
    from ..evaluation import complexity_table

    torch.set_num_threads(threads)
    p = cell.params
    teacher = None
    if cell.teacher:
        _, net = _fit(cell, tracker, run_id, "teacher_", distill=False, fixed_skip=cell.teacher)
        teacher = functools.partial(net, skip=cell.teacher)
    metrics, model = _fit(cell, tracker, run_id, distill=cell.baseline is None, fixed_skip=cell.baseline, teacher=teacher)
    splits = load_splits(p.data)
    configs = [cell.baseline] if cell.baseline else None
    # an individually trained baseline keeps the statistics it was trained with
    grid = grid_accuracy(model, splits, p, configs, p.evaluate.recalibrate_bn and cell.baseline is None)
    size = (splits.in_chans, p.data.image_size, p.data.image_size)
    grid = grid.merge(complexity_table(model, configs, size), on="skip")
    ratios = {k: metrics[k] for k in ("ratio_mandatory", "ratio_skippable") if k in metrics}
    return grid.assign(variant=cell.variant, seed=cell.seed, baseline=cell.baseline, **ratios)


def _fit(cell: Cell, tracker: Optional["Tracker"], run_id: Optional[str], prefix: str = "", **kwargs: Any):
    """``fit`` in this process with each epoch's metrics logged to ``run_id`` (names prefixed); returns the last
    epoch's metrics and the trained model in eval mode."""
    from ..training import WorkerEnv, build_from_spec, fit
    from ..training.checkpoint import load_state

    final: dict = {}

    def report(metrics: dict[str, float], state: Optional[dict]) -> None:
        if tracker is not None:
            tracker.log_metrics(run_id, {prefix + k: v for k, v in metrics.items()}, step=int(metrics["epoch"]))
        if state is not None:
            final.update(state)

    metrics = fit(cell.params, WorkerEnv(report=report), **kwargs)
    model = build_from_spec(final["spec"])
    load_state(model, final["model"], f"{cell.key} {prefix}".strip())
    return metrics, model.eval()


def _cell_task(cell: Cell, tracking: Optional[TrackingTarget], out: str, threads: int) -> str:
    from ..tracking import FAILED, FINISHED, Tracker

    tracker = Tracker(tracking.uri, tracking.experiment) if tracking else None
    run_id = tracking.run_id if tracking else None
    try:
        rows = run_cell(cell, tracker, run_id, threads)
    except Exception as e:
        if tracker is not None:
            tracker.set_tags(run_id, {"error": describe(e)})
            tracker.end_run(run_id, FAILED)
        raise
    if tracker is not None:
        tracker.log_table(run_id, rows, "grid.json")
        tracker.log_metrics(run_id, {f"test_acc1_{r.skip}": r.acc1 for r in rows.itertuples()})
        tracker.end_run(run_id, FINISHED)
    write_csv(rows, out)
    return out


def run_cells(cells: list[Cell], cache: str | Path, tracker=None, parent_run_id: Optional[str] = None,
              cpus_per_cell: float = 1.0) -> pd.DataFrame:
    """Run every cell not already in ``cache`` as a Ray task (one MLflow child run each, under
    ``parent_run_id``); returns all cells' rows. A failed cell fails the study after the others finish."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=cpus_per_cell, max_retries=1)(_cell_task)  # a dead worker's cell runs again
    files = {c.key: cache / f"{c.key}-{cell_hash(c)}.csv" for c in cells}
    todo = [c for c in cells if not files[c.key].exists()]
    if len(todo) < len(cells):
        log.info("%d of %d cells already done (kept from an interrupted run)", len(cells) - len(todo), len(cells))
    pending = {}
    for c in todo:
        target = None
        if tracker is not None:
            run_id = tracker.start_run(c.key, {"variant": c.variant, "seed": str(c.seed), "baseline": c.baseline or "none",
                                               "teacher": c.teacher or "none", "adaskip.cell_hash": cell_hash(c)}, parent_run_id)
            tracker.log_params(run_id, c.params.model_dump(mode="json", include={"data", "model", "train", "evaluate"}))
            target = TrackingTarget(tracker.uri, tracker.experiment, run_id)
        pending[task.remote(c, target, str(files[c.key]), max(1, round(cpus_per_cell)))] = c
    errors = []
    with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="study cells", unit="cell") as bar:
        while pending:
            done, _ = ray.wait(list(pending))
            for ref in done:
                cell = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001  (reported together once every cell has run)
                    errors.append(f"{cell.key}: {describe(e)}")
                bar.update(1)
    if errors:
        raise AdaskipError(f"{len(errors)} study cell(s) failed (the others are kept; re-run to retry):\n" + "\n".join(errors))
    return pd.concat([pd.read_csv(files[c.key]) for c in cells], ignore_index=True)
