"""A study's cells (variant x seed), each a Ray Train run as the ``train`` stage's, sharing the cluster.

A cell trains through :func:`adaskip.orchestration.train.run_training`: a TorchTrainer with the cell's own
``train.workers``, ``cpus_per_worker`` / ``use_gpu``, ``placement`` and ``precision``, a checkpoint every epoch in the
study's cache (the run named by the cell hash, so a re-run or a restarted worker group resumes it), the recurring-error
policy, and each epoch logged once to the cell's MLflow child run. Its sub-network grid is then measured by one Ray
task on the cell's device. The driver starts as many cells as the cluster's CPUs and GPUs fit (the plan) and queues
the rest; each cell's trainer is driven from a thread of this process, so a lost worker host costs a worker-group
restart from the latest checkpoint, never the study. A finished cell's rows are kept in the cache, named by the
hash of the cell's params; its trained model is kept there until the rows are, and a KD baseline's teacher (the run of
its sub-network trained alone: the study's individual baseline's, when it has one) until every cell distilling from
it has its rows.
"""

from __future__ import annotations

import concurrent.futures as futures
import io
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection, Optional

import pandas as pd
import ray
from tqdm.auto import tqdm

from ..ablation.cache import (
    CELL_SECTIONS,
    cell_file,
    cell_hash,
    collect,
    run_name,
    teacher_cell,
    teacher_name,
    unfinished,
)
from ..ablation.spec import Cell
from ..config import ConfigError
from ..console import duration, progress_bars
from ..errors import AdaskipError, describe
from .grid import grid_accuracy
from .storage import Storage
from .reporting import Progress, TrackingTarget, unsent
from .train import Alone, run_training, worker_resources, worker_threads

if TYPE_CHECKING:
    from ..tracking import Tracker

log = logging.getLogger(__name__)


# --- the plan: how many cells the cluster fits at once ---------------------------------------------------------------

Resources = dict[str, float]


def worker_bundles(cell: Cell) -> list[Resources]:
    """What a cell's Ray Train worker group asks: one bundle per worker (as ``make_trainer`` requests them)."""
    return [worker_resources(cell.params.train)] * cell.params.train.workers


def _fits(bundle: Resources, free: Resources) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def place(bundles: list[Resources], free: dict[str, Resources]) -> Optional[dict[str, Resources]]:
    """Bundles placed first-fit on the nodes' ``free`` resources: what each node then has left, or None if they
    do not fit (Ray's PACK and SPREAD are soft: a group may use any nodes with room)."""
    left = {n: dict(r) for n, r in free.items()}
    for b in bundles:
        node = next((n for n, r in left.items() if _fits(b, r)), None)
        if node is None:
            return None
        for k, v in b.items():
            left[node][k] -= v
    return left


def release(
    free: dict[str, Resources], before: dict[str, Resources], after: dict[str, Resources]
) -> dict[str, Resources]:
    """``free`` with what a finished cell held (``before`` minus ``after`` its placement) given back."""
    return {
        n: {k: v + before.get(n, {}).get(k, 0.0) - after.get(n, {}).get(k, 0.0) for k, v in r.items()}
        for n, r in free.items()
    }


@dataclass(frozen=True)
class Plan:
    """How a study runs on a cluster: its cells, what each asks, how many run at once and in how many waves."""

    cells: int
    per_cell: str
    cluster: str
    at_once: int
    waves: int

    def line(self) -> str:
        return (
            f"plan: {self.cells} cells, each {self.per_cell}; the cluster ({self.cluster}) runs {self.at_once} at "
            f"once, {self.waves} wave{'s' if self.waves != 1 else ''}"
        )


def _asks(cell: Cell) -> str:
    t = cell.params.train
    unit = "1 GPU" if t.use_gpu else f"{t.cpus_per_worker:g} CPU"
    return f"{t.workers} worker{'s' if t.workers > 1 else ''} x {unit}"


def plan_cells(cells: list[Cell], nodes: dict[str, Resources]) -> Plan:
    """The plan for ``cells`` on ``nodes`` (node id -> its CPUs and GPUs). A cell that can never run there (more
    than the cluster has, a GPU on a cluster without one) is a ConfigError naming the key, before any work."""
    gpus = sum(r.get("GPU", 0.0) for r in nodes.values())
    cpus = sum(r.get("CPU", 0.0) for r in nodes.values())
    for c in cells:
        t, where = c.params.train, f"study variant {c.variant!r}"
        if t.use_gpu and gpus < 1:
            raise ConfigError(
                f"{where}: train.use_gpu is true but the Ray cluster has no GPU: attach GPU nodes "
                "(RAY_ADDRESS) or set train.use_gpu: false"
            )
        if c.params.evaluate.use_gpu and gpus < 1:
            raise ConfigError(
                f"{where}: evaluate.use_gpu is true but the Ray cluster has no GPU: attach GPU nodes "
                "(RAY_ADDRESS) or set evaluate.use_gpu: false"
            )
        if place(worker_bundles(c), nodes) is None:
            unit = "train.use_gpu" if t.use_gpu else "train.cpus_per_worker"
            raise ConfigError(
                f"{where}: a cell asks {_asks(c)} (train.workers, {unit}) but the Ray cluster has "
                f"{cpus:g} CPUs and {gpus:g} GPUs on {len(nodes)} node(s), so it could never start: lower "
                f"train.workers or {unit}, or attach nodes (RAY_ADDRESS)"
            )
    waves, queue, at_once = 0, list(cells), 0
    while queue:  # every cell as long as the others: start all that fit, then they all finish
        free, started = nodes, []
        for c in queue:
            if (left := place(worker_bundles(c), free)) is not None:
                free = left
                started.append(c)
        queue = [c for c in queue if c not in started]
        at_once = max(at_once, len(started))
        waves += 1
    kinds = sorted({_asks(c) for c in cells})
    return Plan(len(cells), " or ".join(kinds), f"{len(nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs", at_once, waves)


def cluster_nodes() -> dict[str, Resources]:
    """The CPUs and GPUs of every alive node of the attached Ray cluster."""
    return {
        n["NodeID"]: {k: float(n["Resources"].get(k, 0.0)) for k in ("CPU", "GPU")}
        for n in ray.nodes()
        if n.get("Alive")
    }


# --- one cell ---------------------------------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class _EpochCounter:
    """Epochs trained so far, per cell: rank 0 of each cell adds to it, the driver's progress display reads it."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def read(self) -> dict[str, int]:
        return self.counts


@dataclass
class _Queued:
    """One cell waiting in (or taken from) the driver's queue, with what the scheduler decides by."""

    cell: Cell
    name: str  # its Ray Train run's name (run_name): the teacher a KD cell of the same sub-network waits for
    teacher: Optional[str]  # a KD cell's teacher's run name (teacher_name), else None
    epochs: int = 0  # epochs it trains: its own, and its teacher's when it trains that too
    chain: int = 0  # its epochs and those of the longest KD cell that distils from it

    @property
    def key(self) -> str:
        return self.cell.key


def _queue(todo: list[Cell], cache: Storage) -> list[_Queued]:
    """The cells in the order they start: longest chain first (a cell, and after it the KD cells that distil from
    it), so the last wave is short cells, not one long cell alone on an otherwise idle cluster (sorted is stable:
    variants and seeds keep their order among equals). A KD cell whose teacher no cell trains and the cache does not
    hold trains it first (the first such cell per teacher)."""
    queue = [_Queued(c, run_name(c), teacher_name(c)) for c in todo]
    made = {q.name for q in queue} | {q.teacher for q in queue if q.teacher and cache.exists(f"{q.teacher}.pt")}
    for q in queue:
        trains_teacher = q.teacher is not None and q.teacher not in made
        made.add(q.teacher)
        q.epochs = q.cell.params.train.epochs * (2 if trains_teacher else 1)
    students: dict[str, int] = {}
    for q in queue:
        if q.teacher:
            students[q.teacher] = max(students.get(q.teacher, 0), q.epochs)
    for q in queue:
        q.chain = q.epochs + students.get(q.name, 0)
    return sorted(queue, key=lambda q: q.chain, reverse=True)


def _waits(q: _Queued, queued: list[_Queued], running: list[_Queued]) -> bool:
    """Whether a KD cell waits for its teacher: while a cell that trains it (the study's individually trained
    baseline of that sub-network, or another KD cell with the same teacher) is queued or running."""
    return q.teacher is not None and (
        any(o.name == q.teacher for o in queued + running if o is not q) or any(o.teacher == q.teacher for o in running)
    )


def _cell_grid(model_file: dict[str, Any], cell: Cell, threads: int) -> pd.DataFrame:
    """A Ray task: the trained cell's accuracy on the test split (every configuration, or the baseline's own), on
    the GPU Ray gave it when the cell trains or evaluates on one, and MACs and params counted on the CPU."""
    import torch

    from ..data import load_subsets
    from ..evaluation import complexity_table
    from ..models.file import build_from_spec, load_state

    torch.set_num_threads(threads)
    p = cell.params
    model = build_from_spec(model_file["spec"])
    load_state(model, model_file["state_dict"], f"{cell.key} model")
    model.eval()
    subsets = load_subsets(p.data)
    configs = [cell.baseline] if cell.baseline else None
    cost = complexity_table(model, configs, (subsets.in_chans, p.data.image_size, p.data.image_size))
    if _grid_gpus(cell):
        model = model.to("cuda")
    # an individually trained baseline keeps the statistics it was trained with
    grid = grid_accuracy(model, subsets, p, configs, p.evaluate.recalibrate_bn and cell.baseline is None)
    return grid.merge(cost, on="skip")


# Grid tasks get worker processes of their own (Ray pools workers by runtime environment): a finished grid's process,
# torch and timm imported (the most CPU of a grid on a laptop: benchmarks/cell_overhead.py), then serves the next cell's
# grid instead of being taken by the next run's Ray Train actors. The job's own env_vars are merged in by Ray.
GRID_POOL = {"env_vars": {"ADASKIP_POOL": "grid"}}


def _grid_gpus(cell: Cell) -> int:
    return 1 if cell.params.train.use_gpu or cell.params.evaluate.use_gpu else 0


class _Cell:
    """Trains and evaluates one cell from a thread of the driver; every file it keeps is in the study's cache."""

    def __init__(
        self,
        cell: Cell,
        cache: Storage,
        tracker: Optional["Tracker"],
        run_id: Optional[str],
        counter: Any,
        teachers: Collection[str],
    ) -> None:
        self.cell, self.cache, self.tracker, self.run_id = cell, cache, tracker, run_id
        self.teachers = teachers  # the model files other cells of the study distil from: kept after the rows
        self.progress = Progress(counter, cell.key) if counter is not None else None

    def _target(self) -> Optional[TrackingTarget]:
        return TrackingTarget(self.tracker.uri, self.tracker.experiment, self.run_id) if self.tracker else None

    def trained(self, name: str, alone: Optional[Alone], prefix: str = "") -> tuple[dict[str, float], dict]:
        """The metrics and model file (spec, weights shipped: EMA or raw) of Ray Train run ``name``: kept in the
        cache once trained, so a re-run neither trains it again nor needs its checkpoints, which go then."""
        import torch

        from ..models.file import model_file

        if self.cache.exists(f"{name}.pt"):
            kept = torch.load(io.BytesIO(self.cache.read_bytes(f"{name}.pt")), map_location="cpu", weights_only=True)
            return kept["metrics"], kept
        label = f"{self.cell.key}{' teacher' if prefix else ''}: "
        metrics, state = run_training(
            self.cell.params,
            self.cache,
            name,
            self._target(),
            alone=alone,
            prefix=prefix,
            progress=self.progress,
            label=label,
        )
        if self.tracker is not None:
            self.tracker.hand_on(unsent(state))
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        file = model_file(state, self.cell.params.data.image_size, metrics=numbers)
        buf = io.BytesIO()
        torch.save(file, buf)
        self.cache.write_bytes(f"{name}.pt", buf.getvalue())
        self.cache.remove(name)  # the run's checkpoints: the model file above is all a re-run needs
        return metrics, file

    def run(self) -> pd.DataFrame:
        c = self.cell
        alone = None
        if c.baseline:
            alone = Alone(c.baseline)
            if c.teacher:  # trained alone first (by this cell, or by the cell it is), kept, then distilled
                _, teacher = self.trained(teacher_name(c), Alone(c.teacher), "teacher_")
                alone = Alone(c.baseline, c.teacher, ray.put({k: teacher[k] for k in ("spec", "state_dict")}))
        metrics, model = self.trained(run_name(c), alone)
        t = c.params.train
        threads = 1 if t.use_gpu else worker_threads(t)
        # held by this cell in the driver's plan while its workers are gone: the grid runs in the cell's room
        grid = ray.remote(
            num_cpus=0 if _grid_gpus(c) else t.cpus_per_worker,
            num_gpus=_grid_gpus(c),
            max_retries=2,
            runtime_env=GRID_POOL,
        )(_cell_grid)
        rows = ray.get(grid.remote(model, c, threads))
        ratios = {k: metrics[k] for k in ("ratio_mandatory", "ratio_skippable") if k in metrics}
        rows = rows.assign(variant=c.variant, seed=c.seed, baseline=c.baseline, **ratios, cell_hash=cell_hash(c))
        self.cache.write_csv(cell_file(c), rows)
        if run_name(c) not in self.teachers:  # the rows are kept: its model is not needed any more
            self.cache.remove(f"{run_name(c)}.pt")
        return rows


def _cell_run(tracker: Optional["Tracker"], cell: Cell, parent_run_id: Optional[str]) -> Optional[str]:
    """The cell's MLflow child run: an interrupted one continued (its epochs logged once), else a new one."""
    if tracker is None:
        return None
    tags = {
        "variant": cell.variant,
        "seed": str(cell.seed),
        "baseline": cell.baseline or "none",
        "teacher": cell.teacher or "none",
        "adaskip.cell_hash": cell_hash(cell),
    }
    if cell.teacher:  # the run whose adaskip.cell_hash this is logged the teacher's epochs (or this one, teacher_*)
        tags["adaskip.teacher_hash"] = cell_hash(teacher_cell(cell))
    # a FINISHED run whose rows are not in the cache (the cache was cleared) is trained again in a new run: its
    # epochs logged already would make every new epoch look trained again after a restart, and go unlogged
    run_id = tracker.unfinished_run({"adaskip.cell_hash": cell_hash(cell)}, parent_run_id)
    if run_id is not None:
        return tracker.reopen(run_id)
    run_id = tracker.start_run(cell.key, tags, parent_run_id)
    tracker.log_params(run_id, cell.params.model_dump(mode="json", include=CELL_SECTIONS))
    return run_id


def _read(counter: Any, last: dict[str, int]) -> tuple[dict[str, int], Any]:
    """The epoch counts and the counter to ask next time: the last counts when it is busy, and no counter any more
    once it is gone. Progress never fails a study."""
    try:
        return ray.get(counter.read.remote(), timeout=5), counter
    except ray.exceptions.GetTimeoutError:
        return last, counter
    except Exception as e:  # noqa: BLE001  (its node died, ...)
        log.debug("progress counter unavailable, no more progress counts: %s", describe(e))
        return last, None


def _counter() -> Any:
    """The progress counter, on this driver's node: a worker host that dies takes nothing of the study with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return _EpochCounter.options(scheduling_strategy=here).remote()


def run_cells(
    cells: list[Cell],
    cache: Storage,
    tracker: Optional["Tracker"] = None,
    parent_run_id: Optional[str] = None,
    optional: Collection[str] = (),
) -> pd.DataFrame:
    """Run every cell not already in ``cache`` (one MLflow child run each, under ``parent_run_id``), as many at once
    as the cluster fits (the plan, logged first; a cell that can never fit is a ConfigError before any work);
    returns the rows of the cells that finished. A failed cell fails the study after the others finish, unless its
    variant is ``optional`` (run ahead for a later stage, which reports it). Progress: on a terminal a bar of
    epochs trained with each running cell's epoch; otherwise a line per finished cell."""
    todo = unfinished(cells, cache)
    if len(todo) < len(cells):
        log.info(
            "%d of %d cells already done (run ahead by an earlier stage, or kept from an interrupted run)",
            len(cells) - len(todo),
            len(cells),
        )
    errors, failed = [], set()
    if todo:
        errors, failed = _schedule(todo, len(cells), cache, tracker, parent_run_id, optional)
    if errors:
        raise AdaskipError(
            f"{len(errors)} study cell(s) failed (the others are kept; re-run to retry):\n" + "\n".join(errors)
        )
    return collect([c for c in cells if c.key not in failed], cache)


def _schedule(
    todo: list[Cell],
    total: int,
    cache: Storage,
    tracker: Optional["Tracker"],
    parent_run_id: Optional[str],
    optional: Collection[str],
) -> tuple[list[str], set[str]]:
    """Start queued cells while the cluster has room for their workers, each driven from a thread; wait, report
    and start more as they finish. Returns the error lines and the keys of the cells that failed."""
    nodes = cluster_nodes()
    log.info("%s", plan_cells(todo, nodes).line())
    queue = _queue(todo, cache)
    every, teachers = list(queue), {q.teacher for q in queue if q.teacher}
    counter = _counter()
    pool = futures.ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="cell")
    free, running, errors, failed = dict(nodes), {}, [], set()
    started, finished = time.perf_counter(), total - len(todo)
    try:
        with _Bar(every, counter) as bar:
            while queue or running:
                for q in list(queue):  # in order, each that fits now and is not waiting for its teacher
                    if _waits(q, queue, [r for r, *_ in running.values()]):
                        continue
                    if (left := place(worker_bundles(q.cell), free)) is not None:
                        run_id = _cell_run(tracker, q.cell, parent_run_id)
                        job = _Cell(q.cell, cache, tracker, run_id, counter, teachers)
                        running[pool.submit(job.run)] = (q, run_id, free, left)
                        free = left
                        queue.remove(q)
                done, _ = futures.wait(running, timeout=2.0, return_when=futures.FIRST_COMPLETED)
                bar.update([q for q, *_ in running.values()])
                for f in done:
                    q, run_id, before, after = running.pop(f)
                    free = release(free, before, after)
                    finished += 1
                    _finish(tracker, run_id, q.cell, f, errors, failed, optional)
                    what = "failed" if q.key in failed else "done"
                    took = duration(time.perf_counter() - started)
                    log.info("cell %s %s (%d of %d cells, %s)", q.key, what, finished, total, took)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: the process exits, its threads with it
    for name in teachers:  # a teacher's model, once no cell that trains it or distils from it needs it again
        if not any(q.key in failed for q in every if name in (q.name, q.teacher)):
            cache.remove(f"{name}.pt")
    return errors, failed


class _Bar:
    """The study's progress bar on a terminal: epochs trained of every cell's, and each running cell's epoch (read
    from the counter the cells' rank 0 ticks; a restarted cell counts again: capped at its epochs)."""

    def __init__(self, queue: list[_Queued], counter: Any) -> None:
        self.queue, self.reading, self.counts = queue, counter, {}
        self.shown = progress_bars()
        self.bar = tqdm(total=sum(q.epochs for q in queue), desc="study", unit="epoch", disable=not self.shown)

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

    def update(self, running: list[_Queued]) -> None:
        if not self.shown or self.reading is None:
            return
        self.counts, self.reading = _read(self.reading, self.counts)
        self.bar.n = sum(min(self.counts.get(q.key, 0), q.epochs) for q in self.queue)
        self.bar.set_postfix_str(", ".join(f"{q.key} {self.counts.get(q.key, 0)}/{q.epochs}" for q in running))


def _finish(
    tracker: Optional["Tracker"],
    run_id: Optional[str],
    cell: Cell,
    f: futures.Future,
    errors: list[str],
    failed: set[str],
    optional: Collection[str],
) -> None:
    """End a finished cell's MLflow run with its grid, or its error, and note a failure."""
    from ..tracking import FAILED, FINISHED

    try:
        rows = f.result()
    except Exception as e:  # noqa: BLE001  (reported together once every cell has run)
        failed.add(cell.key)
        if cell.variant in optional:
            log.warning("cell %s (run ahead for its own stage) failed: %s", cell.key, describe(e))
        else:
            errors.append(f"{cell.key}: {describe(e)}")
        if tracker is not None:
            tracker.set_tags(run_id, {"error": describe(e)})
            tracker.end_run(run_id, FAILED)
        return
    if tracker is not None:
        tracker.log_table(run_id, rows, "grid.json")
        tracker.log_metrics(run_id, {f"test_acc1_{r.skip}": r.acc1 for r in rows.itertuples()})
        tracker.end_run(run_id, FINISHED)
