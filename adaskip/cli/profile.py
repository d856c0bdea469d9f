"""``adaskip profile``: every sub-network's latency on this machine, written as a long-form table and attached to the
registered model version that serves on this device."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure every sub-network's latency on this machine (for select and serving)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure the p50/p90 latency (ms per forward of one batch) of every sub-network of a "
        "trained model\non this machine, write it in the long form of results/latency.csv (skip, "
        "device, batch_size,\nthreads, p50_ms, p90_ms: tables of several machines concatenate) and "
        "attach it to the registered\nmodel version, where `mlflow models serve` reads the table of "
        'the device it serves on to answer\nbudget requests ({"max_latency_ms": 5}).',
        epilog="examples:\n"
        "  adaskip profile                                    # models/model.pt, batch 1, this "
        "process's threads\n"
        "  adaskip profile models:/adaskip@base --batch 1 32 --threads 1 2\n"
        "  adaskip profile --device cuda --out results/latency-h100.csv\n"
        "  adaskip select --latency results/latency-*.csv --device xeon --max-latency-ms 2\n"
        "exit 0: measured (and attached); 2: bad arguments, a missing model or registry (one line)",
    )
    p.add_argument(
        "model",
        nargs="?",
        default="models/model.pt",
        help="model file, or a registered MLflow Model models:/NAME/VERSION or models:/NAME@ALIAS "
        "(default: %(default)s)",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1], metavar="B", help="batch sizes (default: 1)")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[None],
        metavar="T",
        help="torch intra-op thread counts (default: torch's, the CPUs this process may use)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed forwards first (default: %(default)s)")
    p.add_argument("--reps", type=int, default=10, metavar="N", help="timed forwards (default: %(default)s)")
    p.add_argument("--image-size", type=int, metavar="N", help="input resolution (default: the model file's)")
    p.add_argument(
        "--out", type=Path, metavar="CSV", help="table to write (default: results/latency-<device>-t<threads>.csv)"
    )
    p.add_argument("--no-attach", action="store_true", help="do not attach the table to the registered version")
    p.add_argument(
        "--params",
        default="params.yaml",
        help="its mlflow.tracking_uri and registered_model (default: %(default)s; MLFLOW_TRACKING_URI wins)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The table, the file written and the version it was attached to."""
    from ..console import duration, progress_bars
    from ..files import write_csv
    from ..profile import profile

    tracker, version, model = _resolve(args)
    result = profile(
        model, args.batch, args.threads, args.device, args.warmup, args.reps, args.image_size, progress=progress_bars()
    )
    print(result.summary())
    out = args.out or Path("results") / f"latency-{result.file_name()}"
    write_csv(result.table, out)
    where = ""
    if version:
        tracker.attach_to_model(*version, {f"latency/{result.file_name()}": result.table})
        where = f", attached to {version[0]} version {version[1]} for {result.device}"
    print(f"{len(result.table)} rows on {result.device} in {duration(result.seconds)} -> {out}{where}")
    return 0


def _resolve(args: argparse.Namespace):
    """(tracker or None, (name, version) to attach to or None, the local model file)."""
    from ..config import load_params
    from ..tracking import Tracker, resolve_uri

    from ..profile import ProfileError

    if not args.model.startswith("models:/") and not Path(args.model).is_file():
        raise ProfileError(
            f"no model file at {args.model}: run the train stage (dvc repro), or pass a model file or "
            "models:/NAME/VERSION"
        )
    registry = not args.no_attach or args.model.startswith("models:/")
    if not registry:
        return None, None, args.model
    params = load_params(args.params) if Path(args.params).is_file() else None
    uri = resolve_uri(params and params.mlflow.tracking_uri, Path.cwd())
    if not args.model.startswith("models:/") and uri.startswith("sqlite:///") and not Path(uri[10:]).is_file():
        return None, None, args.model  # no tracking store here: nothing registered to attach to
    tracker = Tracker(uri, params.mlflow.experiment if params else "adaskip")
    if args.model.startswith("models:/"):
        model, version = tracker.download_model(args.model)
        return tracker, None if args.no_attach else version, model
    name = params.mlflow.registered_model if params else "adaskip"
    found = name and tracker.model_version(name, args.model)
    return tracker, (name, found) if found else None, args.model
