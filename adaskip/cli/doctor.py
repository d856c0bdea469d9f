"""``adaskip doctor``: preflight every alive node of the cluster before a long run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "doctor",
        help="check every node of the Ray cluster before a long run",
        description="One task on every alive node of the cluster RAY_ADDRESS names checks the adaskip "
        "code and torch/timm/ray/mlflow versions against this machine's, that the MLflow tracking "
        "server answers, that the storage (cluster.storage / ADASKIP_STORAGE) is shared and "
        "writable, that data.path is readable, and the network interface torch.distributed will use. "
        "Prints one line per node; exit code 1 when a node fails.",
    )
    d.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each node (default: %(default)s)")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Preflight every alive node of the cluster ``RAY_ADDRESS`` names (or this machine); 1 when one fails."""
    from ..orchestration.cluster import configure_ray_env

    configure_ray_env()  # before anything imports ray
    from ..config import load_params
    from ..stage import storage
    from ..tracking import resolve_uri

    params = load_params(args.params)
    uri, store = resolve_uri(params.mlflow.tracking_uri, Path.cwd()), storage(params)
    from ..orchestration import init_ray
    from ..orchestration.cluster import joins_cluster
    from ..orchestration.preflight import required_paths, run_preflight

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
