"""``adaskip export``: one sub-network as a standalone PyTorch / TorchScript / ONNX network, or every depth in one
graph (``--all-depths``), verified."""

from __future__ import annotations

import argparse
from pathlib import Path

GRID = "results/eval_grid.csv"  # the evaluate stage's (adaskip.select.GRID; not imported: --help stays light)


DESCRIPTION = (
    "With --skip SKIP: build sub-network SKIP of a trained model file as a plain network (the\n"
    "skipped stages' skippable blocks removed, each skip-aware norm replaced by the set that sub-network\n"
    "uses, no skip logic left). With --all-depths: one graph of every sub-network whose second input,\n"
    "'skip' (bool[S], true skips that stage's skippable blocks), chooses the depth per call; a call runs\n"
    "only the blocks of that depth (one ONNX If node per stage), each weight is stored once.\n"
    "Either way the written file is loaded back and checked against model(x, skip=...) on a random batch\n"
    "(every depth for --all-depths); a failed check writes nothing.\n\n"
    "formats with --skip:\n"
    "  torch        torch.save of {config, state_dict}; adaskip.export.load_exported(path) rebuilds it\n"
    "  torchscript  torch.jit.trace; loads with torch.jit.load alone (no adaskip, no timm)\n"
    "  onnx         torch.onnx.export, input 'input' (N,C,H,W), output 'logits', dynamic batch; onnxruntime\n"
    "formats with --all-depths:\n"
    "  onnx         inputs 'input' (N,C,H,W) and 'skip' (bool[S]), output 'logits'; its metadata (key\n"
    "               'adaskip', JSON) holds each depth's MACs, params, top-1 (from --grid) and a latency table\n"
    "               measured in ONNX Runtime at --latency-batches (examples/serve_all_depths.py serves it)\n"
    "  pt2          torch.export.save: torch.export.load(path).module()(x, skip) with torch alone; the same\n"
    "               JSON (no latency table) in its extra file 'adaskip.json'"
)
EPILOG = (
    "examples:\n"
    "  adaskip export models/model.pt --skip TTTT --format onnx --out base.onnx --image-size 32\n"
    "  adaskip export models/model.pt --skip FFTT --format torchscript --out fftt.ts --image-size 32\n"
    "  adaskip export models/model.pt --all-depths --format onnx --out all.onnx   # + results/eval_grid.csv\n"
    "  adaskip export models/model.pt --all-depths --format pt2 --out all.pt2\n"
    "errors (bad skip string, missing model file, failed check): one line on stderr, exit 2"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export one sub-network, or every depth in one graph, as a standalone PyTorch / TorchScript / ONNX file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument("model", metavar="MODEL", help="model file written by the train stage (models/model.pt)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--skip",
        metavar="SKIP",
        help="one sub-network: one T (skip) / F (keep) per stage, first stage first: FFFF super-net, TTTT base-net",
    )
    which.add_argument("--all-depths", action="store_true", help="every sub-network in one graph, skip as an input")
    p.add_argument(
        "--format",
        required=True,
        metavar="FORMAT",
        help="torch, torchscript or onnx (--skip); onnx or pt2 (--all-depths)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="output file (written atomically)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: 17; with --all-depths 18)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="input resolution for tracing and checking (default: the model file's training size, or the size a "
        "ViT/Swin is built for)",
    )
    _all_depths_options(p.add_argument_group("--all-depths"))
    p.set_defaults(func=run)


def _all_depths_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--grid",
        type=Path,
        metavar="CSV",
        help=f"evaluation grid whose top-1 goes into the metadata (default: {GRID} when it exists)",
    )
    g.add_argument(
        "--latency-batches",
        default="1,32",
        metavar="B,..",
        help="batch sizes of the ONNX Runtime latency table (default: %(default)s)",
    )
    g.add_argument(
        "--latency-seconds",
        type=float,
        default=20.0,
        metavar="S",
        help="time spent measuring it, all batch sizes together; 0: no table (default: %(default)s)",
    )
    g.add_argument("--threads", type=int, default=1, metavar="N", help="ONNX Runtime threads (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """One summary line on stdout (an AdaskipError: one line on stderr from ``adaskip.cli.main``, exit 2)."""
    if args.all_depths:
        return _all_depths(args)
    from ..export import DEFAULT_OPSET, export_subnetwork

    print(
        export_subnetwork(
            args.model, args.skip, args.format, args.out, image_size=args.image_size, opset=args.opset or DEFAULT_OPSET
        ).line()
    )
    return 0


def _all_depths(args: argparse.Namespace) -> int:
    from ..export import ExportError
    from ..export_all import DEFAULT_OPSET, export_all_depths

    try:
        batches = [int(b) for b in args.latency_batches.split(",")]
    except ValueError:
        raise ExportError(f"--latency-batches {args.latency_batches!r}: give integers separated by commas") from None
    grid = args.grid or (Path(GRID) if Path(GRID).is_file() else None)
    result = export_all_depths(
        args.model,
        args.out,
        args.format,
        image_size=args.image_size,
        grid=grid,
        latency_batches=batches,
        latency_seconds=args.latency_seconds,
        threads=args.threads,
        opset=args.opset or DEFAULT_OPSET,
    )
    print(result.line() + (f"; top-1 from {grid}" if grid else ""))
    return 0
