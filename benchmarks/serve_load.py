"""Load test: concurrent clients against the real `mlflow models serve` of a registered adaskip model, on loopback.

Clients (threads) send a bounded number of requests (and stop at a time limit) mixing the kinds a deployment sees:
a named sub-network (super, base) and budgets (a tight and a loose latency, MACs, accuracy, and one nothing fits,
which must be a 400). It prints requests/s and the p50/p99 client-side latency per kind, then checks every answer:
the logits equal the library's ``model(x, skip)`` for the sub-network the answer named, a budget's choice is the one
adaskip.serving picks from the same tables, the impossible budget got a 400. Exit 1 on any error or mismatch.

Needs a registered, evaluated model (dvc repro), best profiled on this machine first:
    adaskip profile --threads 1 && python benchmarks/serve_load.py --model models:/adaskip@base
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaskip, wherever it is run from
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # its test helpers: local_server


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models:/adaskip@base", help="registered model URI (default: %(default)s)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    p.add_argument("--requests", type=int, default=600, help="requests in all, at most (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=90, help="stop sending after this (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="images per request (default: %(default)s)")
    p.add_argument("--params", default="params.yaml", help="its mlflow.tracking_uri (MLFLOW_TRACKING_URI wins)")
    return p.parse_args(argv)


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 (loopback)
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def kinds(menu) -> dict[str, dict]:
    """The request parameters of each kind, from the served model's own tables."""
    n = menu.num_stages
    front = menu.table[menu.table["pareto"].astype(bool)]  # the grid with this device's latency, as served
    p50 = sorted(front["latency_ms"])
    return {
        "skip super": {"skip": "F" * n},
        "skip base": {"skip": "T" * n},
        "latency tight": {"max_latency_ms": p50[len(p50) // 2]},
        "latency loose": {"max_latency_ms": p50[-1] * 2},
        "macs": {"max_macs": float(front["macs"].median())},
        "accuracy": {"min_acc": float(front["acc1"].median())},
        "impossible (400)": {"max_latency_ms": p50[0] / 2},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from adaskip.config import load_params
    from adaskip.serving import build_menu, read_attached
    from adaskip.tracking import Tracker, resolve_uri
    from helpers import local_server
    from adaskip.models.file import load_model

    torch.set_num_threads(1)  # as each server worker: the same latency table
    configured = load_params(args.params).mlflow.tracking_uri if Path(args.params).is_file() else None
    uri = resolve_uri(configured, Path.cwd())
    model_file, version = Tracker(uri, "adaskip").download_model(args.model)
    net, obj = load_model(model_file)
    net.eval()
    grid, tables = read_attached(model_file.parent.parent)
    if grid is None:
        sys.exit(f"{args.model} has no evaluation grid attached: run the evaluate stage first")
    menu = build_menu(net, obj["image_size"], grid, tables, log=print)
    asks = kinds(menu)
    rng = np.random.default_rng(0)
    size = obj["image_size"]
    inputs = [rng.standard_normal((args.batch, 3, size, size)).astype(np.float32) for _ in range(8)]
    encoded = [json.dumps(x.tolist()) for x in inputs]  # once: the clients measure the server, not json
    results, lock, sent = [], threading.Lock(), iter(range(args.requests))
    names = list(asks)

    def client(_: int) -> None:
        while time.perf_counter() < stop:
            with lock:
                i = next(sent, None)
            if i is None:
                return
            kind = names[i % len(names)]
            body = json.dumps({"inputs": "__X__", "params": asks[kind]}).replace('"__X__"', encoded[i % 8])
            req = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 (loopback)
                    status, answer = r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                status, answer = e.code, json.loads(e.read())
            except OSError as e:
                status, answer = 0, {"message": repr(e)}
            with lock:
                results.append((kind, i % 8, status, answer, time.perf_counter() - start))

    with local_server(uri, args.model, Path("serve_load.log").resolve(), args.workers) as url:
        for _ in range(2 * args.workers):  # warm-up: first requests load lazily
            post(url, {"inputs": inputs[0].tolist(), "params": {"skip": "F" * net.num_stages}})
        begin = time.perf_counter()
        stop = begin + args.max_seconds
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - begin
    return report(results, wall, asks, menu, net, inputs, args)


def report(results: list, wall: float, asks: dict, menu, net, inputs: list, args) -> int:
    """Figures per kind, then the checks; 0 when every answer is right."""
    import torch

    expected: dict = {}

    def library(x: int, skip: str) -> np.ndarray:
        if (x, skip) not in expected:
            with torch.inference_mode():
                expected[x, skip] = net(torch.from_numpy(inputs[x]), skip=skip).numpy()
        return expected[x, skip]

    def problem(kind: str, x: int, status: int, answer: dict) -> str | None:
        """What is wrong with one answer, or None."""
        if kind.startswith("impossible"):
            ok = status == 400 and answer.get("message", "").startswith("no sub-network fits")
            return None if ok else f"{kind}: status {status}, {str(answer)[:120]}"
        if status != 200:
            return f"{kind}: status {status}, {str(answer)[:160]}"
        pred = answer["predictions"]
        skip = pred["skip"] if isinstance(pred, dict) else asks[kind]["skip"]
        if isinstance(pred, dict) and skip != menu.pick(asks[kind])[0]:
            return f"{kind}: answered by {skip}, adaskip.serving picks {menu.pick(asks[kind])[0]}"
        diff = np.abs(np.asarray(pred["logits"] if isinstance(pred, dict) else pred) - library(x, skip)).max()
        return None if diff <= 1e-4 else f"{kind}: {skip}'s logits differ from the library's by {diff:.2e}"

    print(
        f"{len(results)} requests from {args.clients} clients in {wall:.1f} s: {len(results) / wall:.1f} requests/s "
        f"(batch {args.batch}, {args.workers} server worker(s), one torch thread each)"
    )
    print(f"{'kind':<18}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}  answered by")
    problems = []
    for kind in asks:
        mine = [r for r in results if r[0] == kind]
        if not mine:
            continue
        found = [p for _, x, status, answer, _ in mine if (p := problem(kind, x, status, answer))]
        problems += found
        answers = {
            a["predictions"]["skip"] if isinstance(a.get("predictions"), dict) else asks[kind].get("skip")
            for _, _, status, a, _ in mine
            if status == 200
        }
        ms = np.array([r[4] for r in mine]) * 1e3
        print(
            f"{kind:<18}{len(mine):>5}{np.percentile(ms, 50):>9.2f}{np.percentile(ms, 99):>9.2f}{len(found):>8}  "
            f"{', '.join(sorted(answers)) or '400: ' + mine[0][3].get('message', '')[:60]}"
        )
    print(
        f"errors: {len(problems)} (a wrong status, a sub-network other than adaskip.serving picks, logits that "
        "differ from the library's)"
    )
    for line in dict.fromkeys(problems):
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
