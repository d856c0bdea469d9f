"""Benchmark: one self-distillation step vs one plain training step of the same timm model, in the contiguous
(NCHW) and/or channels-last (NHWC) memory format.

In one run, with interleaved repetitions (plain, distill, plain, distill, ... for each format in turn; medians
reported):
  (A) ``adaskip.training.plain_step`` on the plain timm model (one forward/backward, CE);
  (B) ``adaskip.training.distill_step`` on the adaptive-depth wrapper of the same model
      (super-net forward/backward + base-net forward/backward, one optimizer step).
Prints both times per format, the ratio B/A (median over adjacent pairs), and the target
1 + MACs(base)/MACs(super) + 0.1 (about 1.73 for ResNet-50) with PASS/FAIL, checked on the contiguous format
(on channels-last when only that one runs). With ``--channels-last both`` (the default) it also prints
channels-last / contiguous for each step (median of adjacent pairs): below 1 means channels-last is faster,
the figure behind params.yaml's train.channels_last. Exit status 1 on FAIL.

Example: python benchmarks/train_step.py --model resnet50 --image-size 128 --batch-size 16 --reps 7
         python benchmarks/train_step.py --device cuda --amp bf16 --image-size 224 --batch-size 64
         python benchmarks/train_step.py --model resnet34 --model-kwargs '{"channels": [16, 32, 64, 128]}' \
             --image-size 32 --batch-size 32 --num-classes 10
"""

from __future__ import annotations

import argparse
import copy
import json
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

FORMATS = {"off": ("contiguous",), "on": ("channels_last",), "both": ("contiguous", "channels_last")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="timm model name (default: %(default)s)")
    p.add_argument(
        "--model-kwargs",
        type=json.loads,
        default={},
        help="extra timm.create_model arguments as JSON, e.g. '{\"channels\": [16, 32, 64, 128]}'",
    )
    p.add_argument("--image-size", type=int, default=128, help="input resolution (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: %(default)s)")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions of each step (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier width (default: %(default)s)")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)"
    )
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (default: fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--channels-last",
        choices=sorted(FORMATS),
        default="both",
        help="memory format of model and batch: on (channels-last), off (contiguous) or both side by "
        "side (default: %(default)s)",
    )
    return p.parse_args(argv)


def _time(step: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _steps(
    plain: torch.nn.Module,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fmt: str,
    precision: Precision,
    device: torch.device,
) -> tuple[Callable[[], object], Callable[[], object]]:
    """(plain step, distill step) on private copies of the models and batch in memory format ``fmt``."""
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    plain, model = copy.deepcopy(plain).to(memory_format=mf), copy.deepcopy(model).to(memory_format=mf)
    x = x.contiguous(memory_format=mf)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    opt_adn = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler_plain, scaler_adn = precision.scaler(device), precision.scaler(device)
    cfg = DistillConfig()
    return (
        lambda: plain_step(plain, x, y, opt_plain, precision, scaler_plain),
        lambda: distill_step(model, x, y, opt_adn, cfg, precision, scaler_adn),
    )


def _pair_median(num: list[float], den: list[float]) -> float:
    # adjacent pairs: the median of their ratios is the figure least moved by load drift on a shared machine
    return statistics.median(n / d for n, d in zip(num, den))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    plain = timm.create_model(args.model, num_classes=args.num_classes, **args.model_kwargs).to(device).train()
    model = adaskip.create_model(args.model, num_classes=args.num_classes, **args.model_kwargs).to(device).train()
    adaskip.load_timm_weights(model, plain.state_dict())
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    precision = Precision(args.amp)
    formats = FORMATS[args.channels_last]
    steps = {f: _steps(plain, model, x, y, f, precision, device) for f in formats}
    for _ in range(args.warmup):
        for run_plain, run_distill in steps.values():
            run_plain(), run_distill()
    times: dict[str, tuple[list[float], list[float]]] = {f: ([], []) for f in formats}
    for _ in range(args.reps):
        for f, (run_plain, run_distill) in steps.items():
            times[f][0].append(_time(run_plain, device))
            times[f][1].append(_time(run_distill, device))
    s = model.num_stages
    size = (3, args.image_size, args.image_size)
    target = (
        1
        + (
            adaskip.count_macs(model, SkipConfig.base_net(s), size)
            / adaskip.count_macs(model, SkipConfig.super_net(s), size)
        )
        + 0.1
    )
    print(
        f"model={args.model} device={device} amp={args.amp or 'fp32'} image={args.image_size} "
        f"batch={args.batch_size} reps={args.reps} threads={torch.get_num_threads()}"
    )
    for f, (a, b) in times.items():
        print(f"[{f}]")
        print(f"  {'plain step (A)':<28}{statistics.median(a) * 1e3:10.1f} ms   (min {min(a) * 1e3:.1f})")
        print(f"  {'self-distillation step (B)':<28}{statistics.median(b) * 1e3:10.1f} ms   (min {min(b) * 1e3:.1f})")
        print(
            f"  ratio of medians B/A = {statistics.median(b) / statistics.median(a):.3f}; "
            f"median of paired ratios B/A = {_pair_median(b, a):.3f}"
        )
    if len(formats) == 2:
        (ca, cb), (la, lb) = times["contiguous"], times["channels_last"]
        print(
            f"channels_last / contiguous (median of paired ratios; < 1: channels-last faster): "
            f"plain {_pair_median(la, ca):.3f}, self-distillation {_pair_median(lb, cb):.3f}"
        )
    checked = formats[0]
    ratio = _pair_median(times[checked][1], times[checked][0])
    ok = ratio <= target
    print(
        f"[{checked}] ratio B/A = {ratio:.3f}   target <= 1 + MACs(base)/MACs(super) + 0.1 = {target:.3f}   "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
