"""Benchmark: the shared-prefix evaluation grid vs 2^S independent sub-network forwards.

In one run, with interleaved A/B repetitions (A-B, B-A, A-B, ... so drift in machine load hits both
sides alike; medians reported):
  (A) ``adaskip.evaluation.grid_logits``: every sub-network's logits, each distinct stage prefix once;
  (B) ``model(x, skip=cfg)`` for each of the 2^S configurations independently.
The outputs are checked to be the same (torch.testing.assert_close); the script prints both times, the
speed-up B/A, the ideal speed-up from counted MACs, and PASS/FAIL against the target (>= 1.6x for a
4-stage ResNet). Exit status 1 on FAIL or on an output mismatch.

Example: python benchmarks/eval_grid.py --model resnet50 --image-size 64 --batch-size 32 --reps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import adaskip  # noqa: E402
from adaskip.evaluation import grid_logits  # noqa: E402

TARGET = 1.6


def model_parser(doc: str, image_size: int, batch_size: int, reps: int, threads: int) -> argparse.ArgumentParser:
    """The options of a benchmark timing a timm model's sub-networks (also benchmarks/export.py's)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="timm model name (default: %(default)s)")
    p.add_argument(
        "--image-size", type=int, default=image_size, help="input resolution in pixels (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch (default: %(default)s)")
    p.add_argument("--batches", type=int, default=1, help="batches per timed repetition (default: %(default)s)")
    p.add_argument("--reps", type=int, default=reps, help="timed A/B repetition pairs (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier width (default: %(default)s)")
    p.add_argument("--threads", type=int, default=threads, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_positive(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``p``'s arguments, with every size and count of :func:`model_parser` checked to be at least 1."""
    args = p.parse_args(argv)
    for name in ("image_size", "batch_size", "batches", "reps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def parse_args(argv=None) -> argparse.Namespace:
    p = model_parser(__doc__, image_size=64, batch_size=32, reps=5, threads=os.cpu_count() or 1)
    p.add_argument(
        "--target", type=float, default=TARGET, help="required speed-up for a 4-stage ResNet (default: %(default)s)"
    )
    return parse_positive(p, argv)


def randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """Random BN statistics and affines: timm zero-initialises the last BN of each residual block,
    which would make skipping a no-op and the output check vacuous."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))


def run_grid(model, batches):
    return [grid_logits(model, x) for x in batches]


def run_independent(model, batches):
    configs = model.configs()
    return [{str(c): model(x, skip=c) for c in configs} for x in batches]


def counted_macs(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = adaskip.create_model(args.model, num_classes=args.num_classes)
    randomise_norms(model, args.seed)
    model.eval()
    s = model.num_stages
    g = torch.Generator().manual_seed(args.seed)
    batches = [
        torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g) for _ in range(args.batches)
    ]
    print(
        f"model {args.model} ({model.family}, {s} stages, blocks {model.blocks_per_stage}), "
        f"{2**s} configs, input {args.batch_size}x3x{args.image_size}x{args.image_size}, "
        f"{args.batches} batch(es)/rep, {args.reps} rep pairs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )

    sides = {"A grid_logits": run_grid, "B independent": run_independent}
    times = {name: [] for name in sides}
    with torch.inference_mode():
        # untimed warm-up of both sides, whose outputs are the ones checked
        out = {name: fn(model, batches) for name, fn in sides.items()}
        for a, b in zip(out["A grid_logits"], out["B independent"]):
            assert list(a) == list(b), (list(a), list(b))
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5, msg=lambda m: f"{key}: {m}")
        first = out["A grid_logits"][0]
        distinct = len({tuple(v[0, :8].tolist()) for v in first.values()})
        print(
            f"outputs: grid == independent for all {len(first)} configs x {len(batches)} batch(es) "
            f"(assert_close); {distinct} distinct logit vectors"
        )
        del out

        x1 = batches[0][:1]
        macs_a = counted_macs(lambda: grid_logits(model, x1))
        macs_b = counted_macs(lambda: run_independent(model, [x1]))

        for r in range(args.reps):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                start = time.perf_counter()
                sides[name](model, batches)
                times[name].append(time.perf_counter() - start)
            print(
                f"  rep {r + 1}/{args.reps} ({' then '.join(n[0] for n in order)}): "
                f"A {times['A grid_logits'][-1]:.3f} s, B {times['B independent'][-1]:.3f} s, "
                f"B/A {times['B independent'][-1] / times['A grid_logits'][-1]:.2f}x"
            )

    med_a = statistics.median(times["A grid_logits"])
    med_b = statistics.median(times["B independent"])
    ratio = med_b / med_a
    pair_ratio = statistics.median(b / a for a, b in zip(times["A grid_logits"], times["B independent"]))
    print(f"stage passes: A {2 ** (s + 1) - 2} + 1 stem, B {s * 2**s} + {2**s} stems")
    print(f"MACs per image: A {macs_a / 1e9:.3f} G, B {macs_b / 1e9:.3f} G, ideal speed-up {macs_b / macs_a:.2f}x")
    print(
        f"A grid_logits (all {2**s} configs): median {med_a:.3f} s "
        f"({1000 * med_a / (args.batches * args.batch_size):.2f} ms/image)"
    )
    print(
        f"B independent forwards ({2**s} x model(x, skip=cfg)): median {med_b:.3f} s "
        f"({1000 * med_b / (args.batches * args.batch_size):.2f} ms/image)"
    )
    print(f"speed-up B/A: {ratio:.2f}x (median of per-pair ratios {pair_ratio:.2f}x)")
    if model.family == "resnet" and s == 4:
        ok = ratio >= args.target
        print(
            f"{'PASS' if ok else 'FAIL'}: speed-up {ratio:.2f}x {'>=' if ok else '<'} target {args.target:.2f}x "
            f"(4-stage ResNet)"
        )
        return 0 if ok else 1
    print(f"no target for {model.family} with {s} stages (the {args.target:.2f}x target is for 4-stage ResNets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
