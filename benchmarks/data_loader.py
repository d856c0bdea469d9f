"""Benchmark: images/s of the imagefolder training loader with 0 worker processes vs N, in one run.

Writes an ImageFolder tree (train/<class>/*.jpg, plus a small val/) of random-ish JPEGs (smooth colour fields
with noise, ``--source-size`` px square) into a temporary folder, loads it with adaskip's ``imagefolder``
dataset at ``--image-size`` (timm's training augmentation: random-resized crop, flip, colour jitter,
normalise), and times full epochs of ``adaskip.data.make_loader`` over the train split: decoding and
augmentation only, no model. Each loader first runs one untimed epoch (worker start-up, reported apart);
then the timed epochs interleave (0, N, 0, N, ...) and medians are reported, with the ratio vs 0 workers
as the median of adjacent pairs (least moved by load drift on a shared machine).

Example: python benchmarks/data_loader.py
         python benchmarks/data_loader.py --workers 2 4 --images 512 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from adaskip.data import DataConfig, load_subsets, make_loader  # noqa: E402
from adaskip.data.loader import available_cpus, default_workers  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    default_n = max(2, default_workers("imagefolder"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[default_n],
        help="worker counts compared with 0 (default: %(default)s = data.workers' default here, at least 2)",
    )
    p.add_argument("--images", type=int, default=256, help="training JPEGs written (default: %(default)s)")
    p.add_argument("--classes", type=int, default=8, help="class folders (default: %(default)s)")
    p.add_argument("--source-size", type=int, default=224, help="side of the written JPEGs (default: %(default)s)")
    p.add_argument(
        "--image-size", type=int, default=224, help="data.image_size, the crop fed to a model (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    p.add_argument("--reps", type=int, default=5, help="timed epochs per worker count (default: %(default)s)")
    p.add_argument("--root", type=Path, default=None, help="write the tree here instead of a temporary folder")
    return p.parse_args(argv)


def write_tree(root: Path, images: int, classes: int, size: int, seed: int = 0) -> None:
    """``images`` JPEGs spread over ``classes`` folders under train/, and 2 per class under val/."""
    rng = np.random.default_rng(seed)

    def jpeg(path: Path) -> None:
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-24, 25, (size, size, 3), dtype=np.int16)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)

    for i in range(images):
        jpeg(root / "train" / f"class{i % classes:03d}" / f"{i:06d}.jpg")
    for c in range(classes):
        for i in range(2):
            jpeg(root / "val" / f"class{c:03d}" / f"{i}.jpg")


def epoch_seconds(loader) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    return time.perf_counter() - t0, n


def run(args: argparse.Namespace, root: Path) -> None:
    write_tree(root, args.images, args.classes, args.source_size)
    cfg = DataConfig(name="imagefolder", path=str(root), image_size=args.image_size, val_fraction=0.05)
    train = load_subsets(cfg).train
    counts = [0, *[w for w in args.workers if w != 0]]
    loaders = {w: make_loader(train, args.batch_size, shuffle=True, seed=0, num_workers=w) for w in counts}
    first = {}
    for w in counts:  # untimed for the medians: starts the (persistent) worker processes
        first[w] = epoch_seconds(loaders[w])
    times: dict[int, list[float]] = {w: [] for w in counts}
    n = len(train)
    for _ in range(args.reps):
        for w in counts:
            seconds, n = epoch_seconds(loaders[w])
            times[w].append(seconds)
    print(
        f"images={n} (train split) jpeg={args.source_size}px image_size={args.image_size} batch={args.batch_size} "
        f"reps={args.reps} cpus={available_cpus()} torch_threads={torch.get_num_threads()} "
        f"default data.workers={default_workers('imagefolder')}"
    )
    print(f"{'workers':>7}  {'images/s':>9}  {'ratio vs 0':>10}  {'1st epoch images/s (start-up)':>29}")
    for w in counts:
        rate = n / statistics.median(times[w])
        ratio = statistics.median(a / b for a, b in zip(times[0], times[w]))
        print(f"{w:>7}  {rate:>9.1f}  {ratio:>9.2f}x  {first[w][1] / first[w][0]:>29.1f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.root is not None:
        run(args, args.root)
    else:
        with tempfile.TemporaryDirectory(prefix="adaskip-loader-bench-") as tmp:
            run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
