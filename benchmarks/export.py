"""Benchmark: an exported sub-network (plain module, PyTorch eager) vs the adaptive model running the same config.

The adaptive model (random weights, random norm statistics) is saved as the train stage saves models/model.pt,
sub-network ``--skip`` (default the base-net TTTT) is exported in the torch format with
``adaskip.export.export_subnetwork`` (which verifies it) and rebuilt with ``load_exported``. In one run, with
interleaved repetitions (A-B, B-A, ... so drift in machine load hits both sides alike; medians reported):
  (A) the exported SubNetwork: ``sub(x)``;
  (B) the adaptive model: ``model(x, skip=SKIP)``.
Both compute the same operations, so the export must not be slower: PASS when the time ratio A/B is at most
1 + ``--tolerance`` (5 %). The ratio judged is the median of the per-pair ratios (each A and B run back to back,
so a load change on a shared machine hits both); the ratio of the two medians is printed beside it. Exit
status 1 on FAIL or on an output mismatch.

Example: python benchmarks/export.py --model resnet50 --image-size 128 --batch-size 8 --threads 2 --reps 21
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from

import torch  # noqa: E402

import adaskip  # noqa: E402
from adaskip.export import export_subnetwork, load_exported  # noqa: E402
from adaskip.training import save_atomic  # noqa: E402
from eval_grid import model_parser, parse_positive, randomise_norms  # noqa: E402  (this script's folder is on sys.path)


def parse_args(argv=None) -> argparse.Namespace:
    p = model_parser(__doc__, image_size=128, batch_size=8, reps=21, threads=2)
    p.add_argument("--skip", default=None, help="sub-network to export (default: the base-net, TTTT)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="PASS when exported <= (1 + tolerance) x adaptive time (default: %(default)s)",
    )
    return parse_positive(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = adaskip.create_model(args.model, num_classes=args.num_classes)
    randomise_norms(model, args.seed)
    model.eval()
    skip = args.skip or "T" * model.num_stages
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_atomic({"spec": model.spec, "state_dict": model.state_dict(), "macs": {}, "metrics": {}}, path)
        result = export_subnetwork(path, skip, "torch", Path(tmp) / "sub.pt", image_size=args.image_size)
        sub = load_exported(result.path)
    print(
        f"model {args.model} ({model.family}, blocks {model.blocks_per_stage}), sub-network {result.skip}: "
        f"{result.macs / 1e9:.3f} GMACs/image, {result.params / 1e6:.2f} M params (adaptive model "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M); input {args.batch_size}x3x{args.image_size}x"
        f"{args.image_size}, {args.batches} batch(es)/rep, {args.reps} rep pairs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print(f"export check: max |diff| {result.max_abs_diff:.2e} (tolerance {result.tolerance:.1e})")

    g = torch.Generator().manual_seed(args.seed)
    batches = [
        torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g) for _ in range(args.batches)
    ]
    sides = {"A exported": lambda x: sub(x), "B adaptive": lambda x: model(x, skip=skip)}
    times = {name: [] for name in sides}
    with torch.inference_mode():
        # untimed warm-up of both sides, whose outputs are the ones checked
        out = {name: [fn(x) for x in batches] for name, fn in sides.items()}
        for a, b in zip(out["A exported"], out["B adaptive"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        print(f"outputs: exported == adaptive({skip}) on {len(batches)} batch(es) (assert_close)")
        for r in range(args.reps):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                start = time.perf_counter()
                for x in batches:
                    sides[name](x)
                times[name].append(time.perf_counter() - start)
            print(
                f"  rep {r + 1}/{args.reps} ({' then '.join(n[0] for n in order)}): "
                f"A {times['A exported'][-1]:.4f} s, B {times['B adaptive'][-1]:.4f} s, "
                f"A/B {times['A exported'][-1] / times['B adaptive'][-1]:.3f}"
            )

    med_a, med_b = statistics.median(times["A exported"]), statistics.median(times["B adaptive"])
    ratio = med_a / med_b
    pair_ratio = statistics.median(a / b for a, b in zip(times["A exported"], times["B adaptive"]))
    n = args.batches * args.batch_size
    print(f"A exported {skip} (plain module, eager): median {med_a:.4f} s ({1000 * med_a / n:.2f} ms/image)")
    print(f"B adaptive model(x, skip={skip!r}):      median {med_b:.4f} s ({1000 * med_b / n:.2f} ms/image)")
    print(
        f"time ratio exported/adaptive: median of per-pair ratios {pair_ratio:.3f} (ratio of medians "
        f"{ratio:.3f}); speed-up {1 / pair_ratio:.3f}x"
    )
    ok = pair_ratio <= 1 + args.tolerance
    print(
        f"{'PASS' if ok else 'FAIL'}: exported {'faster than or within' if ok else 'slower by more than'} "
        f"{100 * args.tolerance:.0f} % of the adaptive model (per-pair ratio {pair_ratio:.3f} "
        f"{'<=' if ok else '>'} {1 + args.tolerance:.2f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
