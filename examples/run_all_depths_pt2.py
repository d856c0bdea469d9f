"""Run any depth of an all-depths PyTorch program with torch alone (no adaskip, no timm).

The program is ``adaskip export MODEL --all-depths --format pt2 --out all.pt2``'s: ``torch.export.load(path).module()``
is called as ``module(images, skip)`` with ``skip`` a bool tensor of one flag per stage (True skips that stage's
skippable sub-path). Its extra file ``adaskip.json`` lists every depth's MACs and, when exported with a grid, top-1.

    python examples/run_all_depths_pt2.py all.pt2                          # the depths and their figures
    python examples/run_all_depths_pt2.py all.pt2 --skip TTFF --images x.npy --out logits.npy
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def load(path: str) -> tuple[torch.nn.Module, dict]:
    """The program's module and its adaskip metadata."""
    extra = {"adaskip.json": ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra["adaskip.json"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", help="all-depths program (adaskip export --all-depths --format pt2)")
    p.add_argument("--skip", nargs="+", metavar="SKIP", help="depths to run, as skip strings (TTFF)")
    p.add_argument("--images", help=".npy array of (N, C, H, W) float32 images (default: 2 random images)")
    p.add_argument("--out", help=".npz of each depth's logits, keyed by skip string (default: print the classes)")
    args = p.parse_args(argv)
    module, meta = load(args.program)
    depths = {d["skip"]: d for d in meta["depths"]}
    if not args.skip:
        for d in depths.values():
            print(json.dumps(d))
        return 0
    if bad := [s for s in args.skip if s.upper() not in depths]:
        print(f"error: {bad} not among this program's depths: {sorted(depths)}", file=sys.stderr)
        return 2
    size = (meta["in_chans"], meta["image_size"], meta["image_size"])
    x = torch.from_numpy(np.load(args.images)) if args.images else torch.randn(2, *size)
    logits = {}
    with torch.no_grad():
        for skip in (s.upper() for s in args.skip):
            logits[skip] = module(x, torch.tensor([c == "T" for c in skip])).numpy()
            print(f"{skip}: classes {logits[skip].argmax(1).tolist()} ({json.dumps(depths[skip])})")
    if args.out:
        np.savez(args.out, **logits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
