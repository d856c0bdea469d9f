"""``adaskip select``: the best sub-network under a latency / MACs / accuracy budget, optionally exported."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "select",
        help="choose the best sub-network under a latency / MACs / accuracy budget",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read the evaluation grid (results/eval_grid.csv, or an MLflow evaluate run's "
        "eval_grid.json)\nand print the sub-network that answers the budget, among all of them, with its "
        "figures:\na cost cap (--max-latency-ms, --max-macs) gets the most accurate that fits (ties: the "
        "faster);\nan accuracy floor alone (--min-acc) gets the cheapest that meets it (the lowest p50, "
        "else the\nfewest MACs; ties: the more accurate); --prefer decides instead. Latency is the p50 in "
        "ms per\nforward of one batch, measured by evaluate at evaluate.latency_batch_sizes on the grid's device.\n"
        "exit 0: chosen; 1: none fits (one line: what the cheapest costs); 2: bad arguments (one line)",
        epilog="examples:\n"
        "  adaskip select --max-latency-ms 2.5                 # batch: the first measured\n"
        "  adaskip select --max-latency-ms 20 --batch 32 --device cpu --min-acc 80\n"
        "  adaskip select --max-macs 3e6 --export onnx --out small.onnx   # then export it, verified\n"
        "  adaskip select --run 3f2c...e1 --min-acc 85          # the grid of an MLflow evaluate run\n"
        "  adaskip select --grid all.onnx --max-latency-ms 4 --batch 32  # what adaskip export --all-depths measured\n"
        "  adaskip select --latency results/latency-*.csv --device xeon --max-latency-ms 2  # profiled",
    )
    _grid_options(s.add_argument_group("the grid"))
    _budget_options(s.add_argument_group("the budget"))
    _export_options(s.add_argument_group("exporting the choice"))
    s.set_defaults(func=run)


def _grid_options(s: argparse._ArgumentGroup) -> None:
    s.add_argument(
        "--grid",
        metavar="CSV",
        help="evaluation grid (default: results/eval_grid.csv), or an all-depths export (.onnx/.pt2) whose "
        "metadata holds one",
    )
    s.add_argument("--run", metavar="RUN_ID", help="MLflow evaluate run whose eval_grid.json to read instead")
    s.add_argument("--params", default="params.yaml", help="for --run: its mlflow.tracking_uri (default: %(default)s)")


def _budget_options(s: argparse._ArgumentGroup) -> None:
    s.add_argument("--max-latency-ms", type=float, metavar="X", help="p50 ms per batch at most")
    s.add_argument(
        "--batch",
        type=int,
        metavar="B",
        help="batch size --max-latency-ms refers to (default: the first of evaluate.latency_batch_sizes)",
    )
    s.add_argument("--max-macs", type=float, metavar="M", help="multiply-accumulates per image at most (3.5e8)")
    s.add_argument("--min-acc", type=float, metavar="A", help="test top-1 accuracy at least, in %%")
    s.add_argument(
        "--prefer",
        choices=("accuracy", "latency", "macs"),
        help="choose the best at this among those that fit (default: the most accurate under a cost cap, the "
        "fastest, else the fewest MACs, for an accuracy floor alone)",
    )
    s.add_argument(
        "--device",
        metavar="D",
        help="the grid's device whose latency counts (exact, or a unique part: "
        "cpu, H100); needed when the grid holds several",
    )
    s.add_argument(
        "--latency",
        nargs="+",
        type=Path,
        metavar="CSV",
        help="latency tables (adaskip profile's long "
        "form) to use instead of the grid's own, e.g. measured on the serving machine",
    )


def _export_options(s: argparse._ArgumentGroup) -> None:
    s.add_argument(
        "--export", metavar="FORMAT", help="export the choice (torch, torchscript or onnx), as `adaskip export` does"
    )
    s.add_argument("--out", type=Path, metavar="FILE", help="the export's output file")
    s.add_argument("--model", default="models/model.pt", help="model file to export from (default: %(default)s)")
    s.add_argument("--image-size", type=int, metavar="N", help="export input resolution (default: the model file's)")


def run(args: argparse.Namespace) -> int:
    """The verdict line (and the export's line); 0 chosen, 1 nothing fits."""
    from ..select import GRID, Budget, SelectError, choose, read_grid, verdict, with_latency

    if (args.export is None) != (args.out is None):
        raise SelectError("--export FORMAT and --out FILE go together")
    budget = Budget(args.max_latency_ms, args.max_macs, args.min_acc, args.batch, args.device, args.prefer).check()
    if args.grid and Path(args.grid).suffix in (".onnx", ".pt2"):  # an all-depths export: the figures it carries
        from ..export_all import as_grid, read_metadata

        grid = as_grid(read_metadata(args.grid))
    else:
        grid = _from_run(args.run, args.params) if args.run else read_grid(args.grid or GRID)
    if args.latency:
        grid = with_latency(grid, args.latency)
    choice = choose(grid, budget)
    print(verdict(choice, budget))
    if choice.chosen is None:
        return 1
    if args.export:
        from ..export import export_subnetwork

        print(
            export_subnetwork(
                args.model, choice.chosen["skip"], args.export, args.out, image_size=args.image_size
            ).line()
        )
    return 0


def _from_run(run_id: str, params: str | Path):
    """The ``eval_grid.json`` table of MLflow evaluate run ``run_id``; the tracking store is params.yaml's
    (``MLFLOW_TRACKING_URI`` wins; no params file: the project's default store)."""
    from ..config import load_params
    from ..select import TABLE, checked
    from ..tracking import load_table, resolve_uri

    configured = load_params(params).mlflow.tracking_uri if Path(params).is_file() else None
    return checked(load_table(resolve_uri(configured, Path.cwd()), run_id, TABLE), f"run {run_id}")
