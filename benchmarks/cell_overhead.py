"""Benchmark: what a study cell costs as a Ray Train run, against the same training in one process.

In one run, on one local Ray cluster sized to the real cores, the same cells (variants x seeds) train twice:
  (A) as the study trains them: ``run_cells``, each cell a Ray Train run (controller, worker group, a checkpoint
      every epoch) followed by its grid task, as many at once as the cores fit;
  (B) each cell as one 1-CPU Ray task that trains with ``fit`` in its own process, then measures the same grid:
      the in-process cells the study had before its cells became Ray Train runs (what ``make study``'s 7 min 23 s
      was measured with);
  (C) as (A), with Ray Train's default controller poll every 2 s instead of adaskip's 0.5 s: the controller takes
      one report per poll, so an epoch shorter than the poll waits for it (``--variants 4``: the baselines).
The order rotates over repetitions (A-B-C, B-C-A, ...) so drift in machine load hits all alike. It prints the wall
times, the ratios A/B and C/A, and for A the CPU seconds of the processes Ray started, by kind (where the time goes).

Example: python benchmarks/cell_overhead.py --variants 4 --seeds 1 --epochs 15
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from

from adaskip.orchestration.cluster import configure_ray_env  # noqa: E402

configure_ray_env()
import psutil  # noqa: E402
import ray  # noqa: E402

from adaskip.ablation.spec import Cell  # noqa: E402
from adaskip.orchestration.cells import _cell_grid, run_cells  # noqa: E402
from adaskip.orchestration.storage import Storage  # noqa: E402
from adaskip.orchestration.raytrain import POLL_ENV  # noqa: E402
from study_concurrency import parse_checked, start_ray, study_cells, study_parser  # noqa: E402  (its options and cells)


def parse_args(argv=None) -> argparse.Namespace:
    return parse_checked(study_parser(__doc__, epochs=15), argv)  # the study's 15 epochs


def _in_process(cell: Cell) -> int:
    """(B) one cell trained by ``fit`` in this task's process, then its grid: returns the grid's row count."""
    import torch

    from adaskip.training import SELF_DISTILLATION, FitMode, WorkerEnv, fit

    torch.set_num_threads(1)
    state: dict = {}
    fit(
        cell.params,
        WorkerEnv(report=lambda metrics, s: state.update(s or {})),
        mode=FitMode(alone=cell.baseline) if cell.baseline else SELF_DISTILLATION,
    )
    model = {"spec": state["spec"], "state_dict": state.get("ema") or state["model"]}
    return len(_cell_grid(model, cell, 1))


class _CpuByKind:
    """CPU seconds of the processes started while it runs, summed by process title (sampled until each exits)."""

    def __init__(self) -> None:
        self.before = {p.pid for p in psutil.process_iter()}
        self.last: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            for p in psutil.process_iter(["name", "cpu_times"]):
                if p.pid not in self.before and p.info["cpu_times"] is not None:
                    self.last[p.pid] = (p.info["name"], p.info["cpu_times"].user + p.info["cpu_times"].system)
            time.sleep(0.2)

    def result(self) -> collections.Counter:
        self.stop.set()
        self.thread.join()
        out: collections.Counter = collections.Counter()
        for name, cpu in self.last.values():
            out[name] += cpu
        return out


def main(argv=None) -> int:
    args = parse_args(argv)
    every = study_cells(args)
    start_ray(args.cpus)
    task = ray.remote(num_cpus=1)(_in_process)
    sides = ("Ray Train cells", "in-process cells", "Ray Train cells, 2 s poll")
    times: dict[str, list[float]] = {s: [] for s in sides}
    cpu: collections.Counter = collections.Counter()
    driver = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for side in sides[rep % 3 :] + sides[: rep % 3]:
                start, started_cpu = time.perf_counter(), driver.cpu_times()
                if side == sides[0]:
                    sampler = _CpuByKind()
                    run_cells(every, Storage(f"{tmp}/{rep}"))
                    cpu += sampler.result()
                    cpu["driver (the stage process)"] += sum(driver.cpu_times()[:2]) - sum(started_cpu[:2])
                elif side == sides[2]:  # Ray Train reads it from the driver's environment when a run starts
                    os.environ[POLL_ENV] = "2"
                    try:
                        run_cells(every, Storage(f"{tmp}/{rep}-poll"))
                    finally:
                        del os.environ[POLL_ENV]
                else:
                    ray.get([task.remote(c) for c in every])
                times[side].append(time.perf_counter() - start)
                print(f"rep {rep + 1}: {side}: {times[side][-1]:.1f} s", flush=True)
    ray.shutdown()
    a, b, c = (statistics.median(times[s]) for s in sides)
    print(
        f"\n{len(every)} cells ({args.variants} variants x {args.seeds} seeds), {args.epochs} epochs, "
        f"{args.cpus} CPUs, median of {args.reps}:"
    )
    print(f"  {sides[0]}: {a:.1f} s   {sides[1]}: {b:.1f} s   ratio {a / b:.2f}")
    print(f"  {sides[2]}: {c:.1f} s   against {sides[0]}: ratio {c / a:.2f}")
    print(f"CPU seconds of the Ray Train cells' processes, per cell (of {args.reps} rep(s)):")
    for name, s in cpu.most_common(12):
        print(f"  {s / args.reps / len(every):7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
