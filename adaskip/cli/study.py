"""``adaskip study plan``: how many seeds a study needs to detect a difference, before it spends them."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

STUDY = "studies/ablation/study.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("study", help="plan an ablation study: the seeds a difference needs")
    commands = s.add_subparsers(dest="study_command", required=True)
    p = commands.add_parser(
        "plan",
        help="how many seeds detect a difference, from a pilot or a given spread",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each comparison the study's compare stage makes (the reference against each baseline,\n"
        "paired by seed), the seeds whose paired t-test detects --detect percentage points with 80 % power\n"
        "at alpha 0.05, corrected with Holm over the comparisons (planned at Bonferroni's alpha/m, Holm's\n"
        "strictest step). The spread of the per-seed differences comes from a pilot: the study's cells\n"
        "(results/cells/*.csv beside the study file; --run-pilot runs them first), planned at the 80 % upper\n"
        "confidence bound of the pilot's spread and never below half an image step; or from --sd and\n"
        "--test-size (a published spread, taken as known). Then the cost: cell runs and, on the attached\n"
        "cluster (RAY_ADDRESS) or this machine, waves.\n"
        "exit 0: planned; 2: cannot be planned (a difference below one test image, or that no seed count up\n"
        "to --max-seeds detects: one line saying what would help, before torch or Ray is imported)",
        epilog="examples:\n"
        "  adaskip study plan --detect 1                        # from studies/ablation's cells\n"
        "  adaskip study plan --detect 0.5 --sd 0.2 --test-size 50000 --accuracy 76 --comparisons 3",
    )
    p.add_argument("--detect", type=float, required=True, metavar="D", help="difference to detect, in %%p")
    p.add_argument("--study", default=STUDY, help="study file whose cells are the pilot (default: %(default)s)")
    p.add_argument("--sd", type=float, metavar="S", help="per-seed spread of the differences, %%p (no pilot)")
    p.add_argument("--test-size", type=int, metavar="N", help="test images (with --sd)")
    p.add_argument("--accuracy", type=float, default=75.0, metavar="A", help="accuracy near which (with --sd)")
    p.add_argument("--comparisons", type=int, metavar="M", help="the family (default: the study's comparisons)")
    p.add_argument("--max-seeds", type=int, default=100, metavar="K", help="most seeds to consider (%(default)s)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error (default: %(default)s)")
    p.add_argument("--power", type=float, default=0.80, help="power to plan for (default: %(default)s)")
    p.add_argument("--run-pilot", action="store_true", help="run the study's cells first when they are missing")
    p.add_argument("--no-waves", action="store_true", help="skip the waves (they build the cells: imports torch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The plan (a table and the cost); a PlanError (exit 2) when it cannot be made."""
    from ..ablation import plan as planner
    from ..ablation.spec import cells_dir, load_study

    planner.check_target(args.detect, args.comparisons or 1, args.max_seeds)
    spec = load_study(args.study) if args.sd is None or Path(args.study).is_file() else None
    if args.sd is not None:
        if args.test_size is None or args.test_size < 1 or not args.sd > 0:
            raise planner.PlanError("--sd needs --test-size N (test images) and a spread > 0")
        spreads = [planner.Spread("as given", args.sd, None, args.test_size, args.accuracy)]
        source = f"--sd {args.sd:g} %p, taken as known (no pilot: no confidence bound)"
        family = args.comparisons or (len(_compared(spec)) - 1 if spec else 1)  # the reference against each baseline
    else:
        rows = _pilot(spec, args.study, args.run_pilot)
        spreads = planner.pilot_spreads(rows, spec.reference)
        seeds = sorted({s.pilot_seeds for s in spreads})
        source = (
            f"the pilot in {cells_dir(args.study)} ({'/'.join(map(str, seeds))} seeds), "
            f"each planned at the {planner.pw.SD_CONFIDENCE * 100:.0f} % upper confidence bound of its spread"
        )
        family = args.comparisons or len(spreads)
    target = planner.Target(args.detect, family, args.alpha, args.power, args.max_seeds)
    planned = planner.plan(spreads, target)
    print(planner.report(planned, target, source))
    seeds = planner.seeds_needed(planned)
    print("\n" + _cost(spec, seeds, args.no_waves))
    return 0


def _compared(spec) -> list[str]:
    """The variants the compare stage reads: the reference and every baseline."""
    return [spec.reference] + [name for name, v in spec.variants.items() if v.baseline is not None]


def _pilot(spec, study: str, run_pilot: bool):
    """The cells of the compared variants; missing ones run first with ``run_pilot`` (said so), else a PlanError."""
    import pandas as pd

    from ..ablation.plan import PlanError
    from ..ablation.spec import cells_file

    missing = [v for v in _compared(spec) if not cells_file(study, v).is_file()]
    if missing and run_pilot:
        dvc = Path(study).parent / "dvc.yaml"
        stages = [f"{dvc}:cells@{v}" for v in missing]
        print(
            f"no pilot results for {', '.join(missing)}: running the pilot, {len(spec.seeds)} seeds ({spec.seeds}) "
            f"per variant: dvc repro {' '.join(stages)}",
            flush=True,
        )
        dvc_bin = Path(sys.executable).with_name("dvc")  # the environment's DVC, also when it is not on PATH
        subprocess.run([str(dvc_bin) if dvc_bin.is_file() else "dvc", "repro", *stages], check=True)
    elif missing:
        raise PlanError(
            f"no pilot results for {', '.join(missing)} ({cells_file(study, missing[0])}): run the study's cells "
            f"(make study), pass --run-pilot, or plan from a known spread with --sd and --test-size"
        )
    return pd.concat([pd.read_csv(cells_file(study, v)) for v in _compared(spec)], ignore_index=True)


def _cost(spec, seeds: int, no_waves: bool) -> str:
    """What ``seeds`` seeds of the compared variants cost: cell runs, and waves on the attached cluster or here."""
    if spec is None:
        return f"cost: {seeds} seeds per network compared (no study file: no cells or waves to count)"
    variants = _compared(spec)
    line = f"cost: {seeds} seeds x {len(variants)} variants ({', '.join(variants)}) = {seeds * len(variants)} cell runs"
    if no_waves:
        return line
    from ..errors import AdaskipError

    try:
        return f"{line}; {_waves(spec, variants, seeds)}"
    except AdaskipError as e:  # params.yaml missing or a variant that cannot run here: the plan above stands
        return f"{line}; waves not counted: {e}"


def _waves(spec, variants: list[str], seeds: int) -> str:
    import dataclasses

    from ..ablation.spec import cells
    from ..config import load_params
    from ..orchestration.cluster import joins_cluster

    base = cells(spec.model_copy(update={"seeds": spec.seeds[:1]}), load_params("params.yaml"), variants)
    every = [dataclasses.replace(c, seed=s) for c in base for s in range(seeds)]
    if joins_cluster():
        from ..orchestration import init_ray
        from ..orchestration.cells import cluster_nodes, plan_cells

        init_ray()
        nodes, where = cluster_nodes(), f"the cluster at {os.environ.get('RAY_ADDRESS')}"
    else:
        import torch

        from ..orchestration.cells import plan_cells

        nodes = {"here": {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}}
        where = "this machine (no cluster attached: RAY_ADDRESS)"
    p = plan_cells(every, nodes)
    return f"on {where}: {p.per_cell} per cell, {p.at_once} at once, {p.waves} wave{'s' if p.waves != 1 else ''}"
