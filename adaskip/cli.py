"""The ``adaskip`` console command (argparse glue only)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import AdaskipError
from .export import add_parser as export_parser
from .stage import exit_now


def doctor(args: argparse.Namespace) -> int:
    """Preflight every alive node of the cluster ``RAY_ADDRESS`` names (or this machine); 1 when one fails."""
    from .orchestration.cluster import configure_ray_env

    configure_ray_env()  # before anything imports ray
    from .config import load_params
    from .stage import storage
    from .tracking import resolve_uri

    params = load_params(args.params)
    uri, store = resolve_uri(params.mlflow.tracking_uri, Path.cwd()), storage(params)
    from .orchestration import init_ray
    from .orchestration.cluster import joins_cluster
    from .orchestration.preflight import required_paths, run_preflight

    start = time.monotonic()
    init_ray()
    reports = run_preflight(uri, store, required_paths(params), timeout=args.timeout)
    where = "the cluster at RAY_ADDRESS" if joins_cluster() else "this machine (no RAY_ADDRESS: a local Ray)"
    print(f"adaskip doctor: {len(reports)} node(s) of {where}; tracking {uri}; storage {store}")
    for r in reports:
        print("  " + r.line())
    bad = sum(bool(r.problems) for r in reports)
    print(f"{'ok' if not bad else f'{bad} node(s) failing'} ({time.monotonic() - start:.1f} s)")
    return 1 if bad else 0


def recipe(args: argparse.Namespace) -> int:
    """Merge a recipe (and ``--set`` items) into params.yaml, keeping its comments; print what changed."""
    from .recipes import apply_recipe, recipe_overlay

    path, overlay = recipe_overlay(args.recipe, args.set)
    changes = apply_recipe(overlay, args.params, source=f"recipe {path.stem}")
    for c in changes:
        print("  " + c.line())
    print(f"{args.params}: {len(changes)} key(s) changed by recipe {path.stem}"
          + ("; now run `dvc repro` (or `make repro`)" if changes else " (already applied)"))
    return 0


def _recipe_parser(sub: argparse._SubParsersAction) -> None:
    from .recipes import RECIPES_DIR, shipped

    listing = "\n".join(f"  {name:<20} {title}" for name, title in shipped().items())
    r = sub.add_parser("recipe", help="apply a training recipe (params overlay) to params.yaml",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Merge a recipe's keys into params.yaml, keeping its comments and key order; "
                       "validate the result (keys, values, data.path, the model) and write it only then.\n"
                       "An unknown recipe or a bad key: one-line error, exit 2, params.yaml untouched.",
                       epilog=f"shipped recipes ({RECIPES_DIR}):\n{listing}\n\nexample:\n"
                       "  adaskip recipe resnet50_imagenet --set data.path=/data/imagenet && dvc repro")
    r.add_argument("recipe", metavar="NAME_OR_PATH", help="a shipped recipe's name, or the path of an overlay file")
    r.add_argument("--set", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override one key after the recipe, value as YAML (repeatable): --set data.path=/data/cifar")
    r.add_argument("--params", default="params.yaml", help="parameters file to update (default: %(default)s)")
    r.set_defaults(func=recipe)


def _select_parser(sub: argparse._SubParsersAction) -> None:
    from .export import FORMATS
    from .select import GRID, run_cli

    s = sub.add_parser("select", help="choose the best sub-network under a latency / MACs / accuracy budget",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read the evaluation grid (results/eval_grid.csv, or an MLflow evaluate run's "
                       "eval_grid.json)\nand print the most accurate Pareto-front sub-network within every budget "
                       "given (ties: fewer MACs),\nwith its figures. Latency is the p50 in ms per forward of one "
                       "batch, measured by evaluate at\nevaluate.latency_batch_sizes on the grid's device.\n"
                       "exit 0: chosen; 1: none fits (one line: what the cheapest costs); 2: bad arguments (one line)",
                       epilog="examples:\n"
                       "  adaskip select --max-latency-ms 2.5                 # batch: the first measured\n"
                       "  adaskip select --max-latency-ms 20 --batch 32 --device cpu --min-acc 80\n"
                       "  adaskip select --max-macs 3e6 --export onnx --out small.onnx   # then export it, verified\n"
                       "  adaskip select --run 3f2c...e1 --min-acc 85          # the grid of an MLflow evaluate run")
    s.add_argument("--grid", default=GRID, metavar="CSV", help="evaluation grid (default: %(default)s)")
    s.add_argument("--run", metavar="RUN_ID", help="MLflow evaluate run whose eval_grid.json to read instead")
    s.add_argument("--params", default="params.yaml", help="for --run: its mlflow.tracking_uri (default: %(default)s)")
    s.add_argument("--max-latency-ms", type=float, metavar="X", help="p50 ms per batch at most")
    s.add_argument("--batch", type=int, metavar="B", help="batch size --max-latency-ms refers to (default: the "
                   "first of evaluate.latency_batch_sizes)")
    s.add_argument("--device", metavar="D", help="the grid's device whose latency counts (exact, or a unique part: "
                   "cpu, H100); needed when the grid holds several")
    s.add_argument("--max-macs", type=float, metavar="M", help="multiply-accumulates per image at most (3.5e8)")
    s.add_argument("--min-acc", type=float, metavar="A", help="test top-1 accuracy at least, in %%")
    s.add_argument("--export", choices=FORMATS, metavar="FORMAT", help=f"export the choice ({', '.join(FORMATS)}), "
                   "as `adaskip export` does")
    s.add_argument("--out", type=Path, metavar="FILE", help="the export's output file")
    s.add_argument("--model", default="models/model.pt", help="model file to export from (default: %(default)s)")
    s.add_argument("--image-size", type=int, metavar="N", help="export input resolution (default: the model file's)")
    s.set_defaults(func=run_cli)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="adaskip", description="adaptive-depth networks: cluster and model tools")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="check every node of the Ray cluster before a long run",
                       description="One task on every alive node of the cluster RAY_ADDRESS names checks the adaskip "
                       "code and torch/timm/ray/mlflow versions against this machine's, that the MLflow tracking "
                       "server answers, that the storage (cluster.storage / ADASKIP_STORAGE) is shared and "
                       "writable, that data.path is readable, and the network interface torch.distributed will use. "
                       "Prints one line per node; exit code 1 when a node fails.")
    d.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each node (default: %(default)s)")
    d.set_defaults(func=doctor)
    _recipe_parser(sub)
    export_parser(sub)
    _select_parser(sub)
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except AdaskipError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    if args.func is doctor:  # the one command that starts Ray: stop it and exit without a slow finalisation
        exit_now(code)
    sys.exit(code)
