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
    from .config import load_params
    from .stage import storage
    from .tracking import resolve_uri

    params = load_params(args.params, check_model=False)
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
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except AdaskipError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    exit_now(code)
