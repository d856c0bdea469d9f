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
import os
import time
from typing import TYPE_CHECKING, Callable, Collection, Mapping, Optional

import pandas as pd
import ray
from tqdm.auto import tqdm

from ..console import duration, progress_bars
from ..errors import AdaskipError, describe
from ..ablation.spec import Cell
from .grid import grid_accuracy
from .storage import Storage
from .train import TrackingTarget

if TYPE_CHECKING:
    from ..tracking import Tracker
    from ..training import FitMode

log = logging.getLogger(__name__)


CELL_SECTIONS = {"data", "model", "train", "evaluate"}  # what a cell trains and evaluates with (its DVC params too)


def cell_hash(cell: Cell) -> str:
    """The identity of a cell's results: its params sections that change them (not where runs are tracked or
    stored, nor the sweep's settings), its baseline and teacher."""
    spec = {"params": cell.params.model_dump(mode="json", include=CELL_SECTIONS), "baseline": cell.baseline}
    if cell.teacher:  # only when set: hashes of cells without a teacher stay as they were
        spec["teacher"] = cell.teacher
    blob = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_ahead(cells: list[Cell], results: Mapping[str, str | os.PathLike]) -> list[Cell]:
    """The cells whose variant's results file (``results[variant]``) does not hold them, by cell hash: DVC will
    run those variants' stages next, and they then find these cells finished in the study's cache. A file written
    before cells recorded their hash counts as up to date (DVC alone decides about it)."""
    ahead = []
    for variant, path in results.items():
        try:
            recorded = pd.read_csv(path, usecols=lambda c: c == "cell_hash").get("cell_hash")
        except FileNotFoundError:
            recorded = pd.Series([], dtype=str)
        if recorded is not None:
            recorded = set(recorded)
            ahead += [c for c in cells if c.variant == variant and cell_hash(c) not in recorded]
    return ahead


def run_cell(cell: Cell, tracker: Optional["Tracker"] = None, run_id: Optional[str] = None,
             threads: int = 1, on_epoch: Callable[[], None] = lambda: None) -> pd.DataFrame:
    """Train one cell in this process (adaptive-depth: self-distillation; baseline: CE on its one sub-network, or
    KD from its teacher trained alone first), logging each epoch to ``run_id`` and calling ``on_epoch``, then
    evaluate it on the test split: every configuration, or the baseline's own. One row per configuration."""
    import torch

    from ..data import load_subsets
    from ..evaluation import complexity_table
    from ..training import FitMode

    torch.set_num_threads(threads)
    p = cell.params
    teacher = None
    if cell.teacher:
        _, net = _fit(cell, tracker, run_id, FitMode(alone=cell.teacher), on_epoch, "teacher_")
        teacher = functools.partial(net, skip=cell.teacher)
    metrics, model = _fit(cell, tracker, run_id, FitMode(alone=cell.baseline, teacher=teacher), on_epoch)
    subsets = load_subsets(p.data)
    configs = [cell.baseline] if cell.baseline else None
    # an individually trained baseline keeps the statistics it was trained with
    grid = grid_accuracy(model, subsets, p, configs, p.evaluate.recalibrate_bn and cell.baseline is None)
    size = (subsets.in_chans, p.data.image_size, p.data.image_size)
    grid = grid.merge(complexity_table(model, configs, size), on="skip")
    ratios = {k: metrics[k] for k in ("ratio_mandatory", "ratio_skippable") if k in metrics}
    return grid.assign(variant=cell.variant, seed=cell.seed, baseline=cell.baseline, **ratios, cell_hash=cell_hash(cell))


def _fit(cell: Cell, tracker: Optional["Tracker"], run_id: Optional[str], mode: "FitMode",
         on_epoch: Callable[[], None], prefix: str = ""):
    """``fit`` in this process with each epoch's metrics logged to ``run_id`` (names prefixed) and ``on_epoch``
    called; returns the last epoch's metrics and the trained model in eval mode."""
    from ..training import WorkerEnv, build_from_spec, fit
    from ..training.checkpoint import load_state

    final: dict = {}

    def report(metrics: dict[str, float], state: Optional[dict]) -> None:
        if tracker is not None:
            tracker.log_metrics(run_id, {prefix + k: v for k, v in metrics.items()}, step=int(metrics["epoch"]))
        if state is not None:
            final.update(state)
        on_epoch()

    metrics = fit(cell.params, WorkerEnv(report=report), mode=mode)
    model = build_from_spec(final["spec"])
    load_state(model, final.get("ema") or final["model"], f"{cell.key} {prefix}".strip())
    return metrics, model.eval()


@ray.remote(num_cpus=0)
class _EpochCounter:
    """Epochs trained so far, per cell: the cell tasks add to it, the driver's progress display reads it."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def read(self) -> dict[str, int]:
        return self.counts


def _epochs(cell: Cell) -> int:
    """Epochs a cell trains: its own, and as many again for a teacher trained first."""
    return cell.params.train.epochs * (2 if cell.teacher else 1)


def _cell_task(cell: Cell, tracking: Optional[TrackingTarget], cache: Storage, out: str, threads: int,
               counter: Optional[ray.actor.ActorHandle] = None) -> str:
    from ..tracking import FAILED, FINISHED, Tracker

    tracker = Tracker(tracking.uri, tracking.experiment) if tracking else None
    run_id = tracking.run_id if tracking else None
    if tracker is not None:  # where it ran: on a cluster, the node and host of each cell
        ctx = ray.get_runtime_context()
        tracker.set_tags(run_id, {"adaskip.node_id": ctx.get_node_id(), "adaskip.node_ip": ray.util.get_node_ip_address()})
    try:
        on_epoch = (lambda: counter.add.remote(cell.key)) if counter is not None else (lambda: None)
        rows = run_cell(cell, tracker, run_id, threads, on_epoch)
    except Exception as e:
        if tracker is not None:
            tracker.set_tags(run_id, {"error": describe(e)})
            tracker.end_run(run_id, FAILED)
        raise
    if tracker is not None:
        tracker.log_table(run_id, rows, "grid.json")
        tracker.log_metrics(run_id, {f"test_acc1_{r.skip}": r.acc1 for r in rows.itertuples()})
        tracker.end_run(run_id, FINISHED)
    cache.write_csv(out, rows)
    return out


def cell_file(cell: Cell) -> str:
    """The cell's rows in the study's cache, named by its params hash."""
    return f"{cell.key}-{cell_hash(cell)}.csv"


def unfinished(cells: list[Cell], cache: Storage) -> list[Cell]:
    """The cells whose rows are not in the study's cache yet."""
    return [c for c in cells if not cache.exists(cell_file(c))]


def run_cells(cells: list[Cell], cache: Storage, tracker=None, parent_run_id: Optional[str] = None,
              cpus_per_cell: float = 1.0, optional: Collection[str] = ()) -> pd.DataFrame:
    """Run every cell not already in ``cache`` as a Ray task (one MLflow child run each, under
    ``parent_run_id``); returns the rows of the cells that finished. A failed cell fails the study after the
    others finish, unless its variant is ``optional`` (run ahead for a later stage, which reports it). Progress:
    on a terminal a bar of epochs trained with each running cell's epoch; otherwise a line per finished cell."""
    task = ray.remote(num_cpus=cpus_per_cell, max_retries=1)(_cell_task)  # a dead worker's cell runs again
    files = {c.key: cell_file(c) for c in cells}
    todo = unfinished(cells, cache)
    if len(todo) < len(cells):
        log.info("%d of %d cells already done (run ahead by an earlier stage, or kept from an interrupted run)",
                 len(cells) - len(todo), len(cells))
    pending = {}
    counter = _EpochCounter.remote() if todo else None  # nothing to run: no Ray needed (nor started)
    for c in todo:
        target = None
        if tracker is not None:
            run_id = tracker.start_run(c.key, {"variant": c.variant, "seed": str(c.seed), "baseline": c.baseline or "none",
                                               "teacher": c.teacher or "none", "adaskip.cell_hash": cell_hash(c)}, parent_run_id)
            tracker.log_params(run_id, c.params.model_dump(mode="json", include={"data", "model", "train", "evaluate"}))
            target = TrackingTarget(tracker.uri, tracker.experiment, run_id)
        pending[task.remote(c, target, cache, files[c.key], max(1, round(cpus_per_cell)), counter)] = c
    errors, failed = [], set()
    kept = sum(_epochs(c) for c in cells) - sum(_epochs(c) for c in todo)
    started, finished = time.perf_counter(), len(cells) - len(todo)
    with tqdm(total=sum(_epochs(c) for c in cells), initial=kept, desc="study", unit="epoch",
              disable=not progress_bars()) as bar:
        while pending:
            done, _ = ray.wait(list(pending), timeout=2.0)
            counts = ray.get(counter.read.remote())  # a retried cell counts again: capped at its epochs
            bar.n = kept + sum(min(counts.get(c.key, 0), _epochs(c)) for c in todo)
            bar.set_postfix_str(", ".join(f"{c.key} {counts.get(c.key, 0)}/{_epochs(c)}" for c in pending.values()))
            for ref in done:
                cell = pending.pop(ref)
                finished += 1
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001  (reported together once every cell has run)
                    failed.add(cell.key)
                    if cell.variant in optional:
                        log.warning("cell %s (run ahead for its own stage) failed: %s", cell.key, describe(e))
                    else:
                        errors.append(f"{cell.key}: {describe(e)}")
                log.info("cell %s %s (%d of %d cells, %s)", cell.key, "failed" if cell.key in failed else "done",
                         finished, len(cells), duration(time.perf_counter() - started))
    if errors:
        raise AdaskipError(f"{len(errors)} study cell(s) failed (the others are kept; re-run to retry):\n" + "\n".join(errors))
    return pd.concat([cache.read_csv(files[c.key]) for c in cells if c.key not in failed], ignore_index=True)
