"""Benchmark: one self-distillation step vs one plain training step of the same timm model.

In one run, with interleaved repetitions (plain, distill, plain, distill, ...; medians reported):
  (A) ``adaskip.training.plain_step`` on the plain timm model (one forward/backward, CE);
  (B) ``adaskip.training.distill_step`` on the adaptive-depth wrapper of the same model
      (super-net forward/backward + base-net forward/backward, one optimizer step).
Prints both times, the ratio B/A (median over adjacent pairs), and the target 1 + MACs(base)/MACs(super) + 0.1 (about 1.73 for
ResNet-50) with PASS/FAIL. Exit status 1 on FAIL.

Example: python benchmarks/train_step.py --model resnet50 --image-size 128 --batch-size 16 --reps 7
         python benchmarks/train_step.py --device cuda --amp bf16 --image-size 224 --batch-size 64
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from

import timm  # noqa: E402
import torch  # noqa: E402

import adaskip  # noqa: E402
from adaskip.models import SkipConfig  # noqa: E402
from adaskip.training import DistillConfig, Precision, distill_step, plain_step  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="timm model name (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=128, help="input resolution (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: %(default)s)")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions of each step (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier width (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: %(default)s)")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (default: fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def _time(step: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    plain = timm.create_model(args.model, num_classes=args.num_classes).to(device).train()
    model = adaskip.create_model(args.model, num_classes=args.num_classes).to(device).train()
    adaskip.load_timm_weights(model, plain.state_dict())
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    precision = Precision(args.amp)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    opt_adn = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler_plain, scaler_adn = precision.scaler(device), precision.scaler(device)
    cfg = DistillConfig()

    def run_plain():
        return plain_step(plain, x, y, opt_plain, precision, scaler_plain)

    def run_distill():
        return distill_step(model, x, y, opt_adn, cfg, precision, scaler_adn)

    for _ in range(args.warmup):
        run_plain(), run_distill()
    a, b = [], []
    for _ in range(args.reps):
        a.append(_time(run_plain, device))
        b.append(_time(run_distill, device))
    ta, tb = statistics.median(a), statistics.median(b)
    s = model.num_stages
    size = (3, args.image_size, args.image_size)
    ratio_macs = (adaskip.count_macs(model, SkipConfig.base_net(s), size)
                  / adaskip.count_macs(model, SkipConfig.super_net(s), size))
    target = 1 + ratio_macs + 0.1
    # each distill step is timed right after a plain one: the median of those pair ratios is the
    # figure least moved by load drift on a shared machine
    ratio = statistics.median(bi / ai for ai, bi in zip(a, b))
    print(f"model={args.model} device={device} amp={args.amp or 'fp32'} image={args.image_size} "
          f"batch={args.batch_size} reps={args.reps} threads={torch.get_num_threads()}")
    print(f"{'plain step (A)':<28}{ta * 1e3:10.1f} ms   (min {min(a) * 1e3:.1f})")
    print(f"{'self-distillation step (B)':<28}{tb * 1e3:10.1f} ms   (min {min(b) * 1e3:.1f})")
    print(f"ratio of medians = {tb / ta:.3f}")
    print(f"ratio B/A (median of paired ratios) = {ratio:.3f}   target <= 1 + MACs(base)/MACs(super) + 0.1 = {target:.3f}   "
          f"{'PASS' if ratio <= target else 'FAIL'}")
    return 0 if ratio <= target else 1


if __name__ == "__main__":
    sys.exit(main())
