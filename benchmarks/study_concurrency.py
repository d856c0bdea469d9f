"""Benchmark: a study's cells all at once vs one variant after another, on a local Ray sized to the real cores.

In one run, on one local Ray cluster and the same code path (``adaskip.orchestration.cells.run_cells``, each cell a
Ray Train run):
  (A) every cell of the study in one call: the driver starts as many as the cores fit (one 1-CPU worker each);
  (B) one variant after another: one call per variant, as DVC would run the variant stages without running ahead.
Each side trains its cells from scratch (its own cache). The order alternates over repetitions (A-B, B-A, ...) so
drift in machine load hits both alike. It prints both wall times, the ratio A/B and PASS/FAIL against the target
(at most 0.65: with 2 variants x 1 seed on 2 cores, the ideal is 0.5). Exit status 1 on FAIL.

Example: python benchmarks/study_concurrency.py --variants 2 --seeds 1 --epochs 8 --reps 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from

from adaskip.orchestration.cluster import configure_ray_env  # noqa: E402

configure_ray_env()
import ray  # noqa: E402

from adaskip.ablation.spec import StudySpec, cells  # noqa: E402
from adaskip.config import load_params  # noqa: E402
from adaskip.orchestration.cells import run_cells  # noqa: E402
from adaskip.orchestration.storage import Storage  # noqa: E402

TARGET = 0.65
# The first two cost the same (self-distillation of every sub-network), so that 0.5 is the ideal of 2 variants.
VARIANTS = {
    "adn": {},
    "no_skip_aware_norm": {"overrides": {"model": {"skip_aware_norm": False}}},
    "individual_full": {"baseline": "super"},
    "individual_base": {"baseline": "base"},
}


def study_parser(doc: str, epochs: int) -> argparse.ArgumentParser:
    """The options of a benchmark over a small study of 1-CPU cells (also benchmarks/cell_overhead.py's)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    p.add_argument(
        "--variants",
        type=int,
        default=2,
        choices=range(1, len(VARIANTS) + 1),
        help="variants of the study (default: %(default)s)",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs per cell (default: %(default)s)")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="local Ray CPUs (default: %(default)s)")
    p.add_argument("--reps", type=int, default=1, help="A/B repetition pairs (default: %(default)s)")
    return p


def parse_checked(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    for name in ("seeds", "epochs", "cpus", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def study_cells(args: argparse.Namespace) -> list:
    """The study's cells: the first ``--variants`` of VARIANTS x ``--seeds``, one 1-CPU worker each."""
    names = list(VARIANTS)[: args.variants]
    spec = StudySpec(
        name="bench",
        seeds=list(range(args.seeds)),
        epochs=args.epochs,
        overrides={"train": {"workers": 1, "cpus_per_worker": 1}},
        variants={v: VARIANTS[v] for v in names},
    )
    return cells(spec, load_params(args.params))


def start_ray(cpus: int) -> None:
    """A quiet local Ray of ``cpus`` CPUs for the cells."""
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        object_store_memory=300 * 2**20,
        configure_logging=False,
        log_to_driver=False,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = study_parser(__doc__, epochs=8)
    p.add_argument("--target", type=float, default=TARGET, help="largest A/B ratio that passes (default: %(default)s)")
    return parse_checked(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = list(VARIANTS)[: args.variants]
    every = study_cells(args)
    start_ray(args.cpus)
    times: dict[str, list[float]] = {"at once": [], "one variant after another": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for side in (
                ("at once", "one variant after another") if rep % 2 == 0 else ("one variant after another", "at once")
            ):
                cache = Storage(f"{tmp}/{side.replace(' ', '-')}-{rep}")
                start = time.perf_counter()
                if side == "at once":
                    run_cells(every, cache)
                else:
                    for v in names:
                        run_cells([c for c in every if c.variant == v], cache)
                times[side].append(time.perf_counter() - start)
                print(f"rep {rep + 1}: {side}: {times[side][-1]:.1f} s", flush=True)
    ray.shutdown()
    a, b = (statistics.median(times[k]) for k in ("at once", "one variant after another"))
    ratio = a / b
    print(
        f"{len(names)} variants x {args.seeds} seed(s), {args.epochs} epochs, 1-CPU cells on {args.cpus} CPUs: "
        f"all at once {a:.1f} s, one variant after another {b:.1f} s, ratio {ratio:.3f} "
        f"({'PASS' if ratio <= args.target else 'FAIL'}: target <= {args.target})"
    )
    return 0 if ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
