"""Benchmark: every depth in one ONNX graph (``adaskip export --all-depths``) against one single-depth ONNX file per
depth (``adaskip export --skip``), in ONNX Runtime.

For a trained model file (default: the pipeline's models/model.pt with its results/eval_grid.csv) it writes the
all-depths graph and the 2^S single-depth files into a temporary folder, then prints:
  1. each depth's top-1 on the test split (params.yaml's data) run through the all-depths graph, against the grid's,
     and the largest logit difference from the library's ``model(x, skip)`` over the whole split;
  2. each depth's p50 latency (ms per batch, one ONNX Runtime thread) of the all-depths graph against its
     single-depth file, at batch 32 and at batch 1, with the repetitions of every file interleaved in rounds
     (``adaskip.evaluation.latency.interleaved``), and the ratio all/single (goal: at most 1.1 at batch 32);
  3. the file sizes: the all-depths graph against one single-depth file (the super-net's) and against the 2^S files.
Exit status 1 when a top-1 differs from the grid's.

Example: python benchmarks/all_depths.py --seconds 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from adaskip.config import load_params  # noqa: E402
from adaskip.data import load_subsets, make_loader  # noqa: E402
from adaskip.evaluation.latency import interleaved  # noqa: E402
from adaskip.export import export_subnetwork, ort_session  # noqa: E402
from adaskip.export_all import export_all_depths, skip_flags  # noqa: E402
from adaskip.models.file import load_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/model.pt", help="trained model file (default: %(default)s)")
    p.add_argument("--grid", default="results/eval_grid.csv", help="its evaluation grid (default: %(default)s)")
    p.add_argument("--params", default="params.yaml", help="the data section to test on (default: %(default)s)")
    p.add_argument("--batches", default="32,1", help="batch sizes to time (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="timing per batch size (default: %(default)s)")
    return p.parse_args(argv)


def accuracy(model_path: str, onnx_path: Path, params: str) -> pd.DataFrame:
    """Each depth's top-1 on the test split through the all-depths graph, and its largest logit difference from
    the library's forward."""
    net, _ = load_model(model_path)
    net.eval()
    p = load_params(params)
    loader = make_loader(load_subsets(p.data).test, p.evaluate.batch_size, shuffle=False, seed=0, num_workers=0)
    session = ort_session(str(onnx_path), torch.get_num_threads())
    rows = []
    for cfg in net.configs():
        skip, hits, n, diff = str(cfg), 0, 0, 0.0
        for images, targets in loader:
            (logits,) = session.run(["logits"], {"input": images.numpy(), "skip": skip_flags(skip)})
            with torch.no_grad():
                diff = max(diff, float(np.abs(logits - net(images, skip=skip).numpy()).max()))
            hits, n = hits + int((logits.argmax(1) == targets.numpy()).sum()), n + len(targets)
        rows.append({"skip": skip, "acc1_onnx": 100.0 * hits / n, "max_abs_logit_diff": diff, "n": n})
    return pd.DataFrame(rows)


def latency(all_path: Path, singles: dict[str, Path], input_size: tuple, batch: int, seconds: float) -> pd.DataFrame:
    """p50 ms per batch of each depth in the all-depths graph and in its own file, one thread, interleaved."""
    x = np.random.default_rng(0).standard_normal((batch, *input_size), dtype=np.float32)
    every = ort_session(str(all_path), 1)
    calls = {}
    for skip, path in singles.items():
        own = ort_session(str(path), 1)
        calls[(skip, "all")] = lambda s=skip: every.run(["logits"], {"input": x, "skip": skip_flags(s)})
        calls[(skip, "single")] = lambda own=own: own.run(["logits"], {"input": x})
    p50 = {k: float(np.median(v)) for k, v in interleaved(calls, seconds).items()}
    rows = [{"skip": s, "all_ms": p50[(s, "all")], "single_ms": p50[(s, "single")]} for s in singles]
    return pd.DataFrame(rows).assign(ratio=lambda t: t["all_ms"] / t["single_ms"], batch=batch)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    grid = pd.read_csv(args.grid, dtype={"skip": str}).drop_duplicates("skip")
    with tempfile.TemporaryDirectory() as tmp:
        made = export_all_depths(args.model, Path(tmp) / "all.onnx", grid=grid, latency_seconds=0)
        size = made.image_size
        singles = {s: Path(tmp) / f"{s}.onnx" for s in made.depths["skip"]}
        for skip, path in singles.items():
            export_subnetwork(args.model, skip, "onnx", path, image_size=size)
        acc = accuracy(args.model, made.path, args.params).merge(grid[["skip", "acc1"]], on="skip")
        acc["same_top1"] = np.isclose(acc["acc1_onnx"], acc["acc1"])
        print(f"1. top-1 on the test split ({int(acc['n'].iloc[0])} images): all-depths graph vs the grid\n")
        print(acc.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        in_chans = int(ort_session(str(made.path), 1).get_inputs()[0].shape[1])
        shape = (in_chans, size, size)
        tables = [latency(made.path, singles, shape, int(b), args.seconds) for b in args.batches.split(",")]
        print("\n2. p50 ms per batch in ONNX Runtime, 1 thread, interleaved: all-depths graph vs single-depth file\n")
        for t in tables:
            ratio = t["ratio"]
            print(f"batch {t['batch'].iloc[0]}: ratio all/single median {ratio.median():.3f}, max {ratio.max():.3f}")
            print(t.drop(columns="batch").to_string(index=False, float_format=lambda v: f"{v:.3f}"), "\n")
        one, every = singles["F" * len(next(iter(singles)))].stat().st_size, made.path.stat().st_size
        total = sum(p.stat().st_size for p in singles.values())
        print(
            f"3. file sizes: all-depths {every / 1e6:.2f} MB | the super-net's single file {one / 1e6:.2f} MB "
            f"({every / one:.2f}x) | the {len(singles)} single files {total / 1e6:.2f} MB ({every / total:.3f}x)"
        )
    return 0 if acc["same_top1"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
