"""``adaskip export``: one sub-network as a standalone PyTorch / TorchScript / ONNX network, verified."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export one sub-network (skip string) as a standalone PyTorch / TorchScript / ONNX network",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build sub-network SKIP of a trained model file as a plain network: the skipped stages'\n"
        "skippable blocks removed, each skip-aware norm replaced by the set that sub-network uses, no skip\n"
        "logic left. Write it in FORMAT, load it back and check its outputs against model(x, skip=SKIP) on\n"
        "a random batch; print its MACs, parameters and the max abs difference. A failed check writes nothing.\n\n"
        "formats:\n"
        "  torch        torch.save of {config, state_dict}; adaskip.export.load_exported(path) rebuilds it\n"
        "  torchscript  torch.jit.trace; loads with torch.jit.load alone (no adaskip, no timm)\n"
        "  onnx         torch.onnx.export, input 'input' (N,C,H,W), output 'logits', dynamic batch; onnxruntime",
        epilog="examples:\n"
        "  adaskip export models/model.pt --skip TTTT --format onnx --out base.onnx --image-size 32\n"
        "  adaskip export models/model.pt --skip FFTT --format torchscript --out fftt.ts --image-size 32\n"
        "errors (bad skip string, missing model file, failed check): one line on stderr, exit 2",
    )
    p.add_argument("model", metavar="MODEL", help="model file written by the train stage (models/model.pt)")
    p.add_argument(
        "--skip",
        required=True,
        metavar="SKIP",
        help="one T (skip) / F (keep) per stage, first stage first: FFFF super-net, TTTT base-net",
    )
    p.add_argument("--format", required=True, metavar="FORMAT", help="output format: torch, torchscript or onnx")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="output file (written atomically)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset, onnx format only (default: 17)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="input resolution for tracing and checking (default: the model's own when recorded, as for "
        "ViT/Swin; required for ResNet/MobileNetV2: the data.image_size it was trained on)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """One summary line on stdout (an AdaskipError: one line on stderr from ``adaskip.cli.main``, exit 2)."""
    from ..export import DEFAULT_OPSET, export_subnetwork

    print(
        export_subnetwork(
            args.model, args.skip, args.format, args.out, image_size=args.image_size, opset=args.opset or DEFAULT_OPSET
        ).line()
    )
    return 0
