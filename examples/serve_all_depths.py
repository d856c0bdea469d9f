"""Serve an all-depths ONNX graph by budget, with ONNX Runtime alone (no torch, no adaskip).

The graph is ``adaskip export MODEL --all-depths --format onnx --out all.onnx``'s: inputs ``input`` (N, C, H, W)
float32 and ``skip`` bool[S], output ``logits``, and in its metadata (key ``adaskip``, JSON) every depth's MACs, the
evaluation grid's top-1 and a latency table measured in ONNX Runtime when it was exported. A request names a depth
(``skip``) or a budget, answered by the rule ``adaskip select`` documents:

- a cost cap (``max_latency_ms`` at ``batch``, ``max_macs``), with or without ``min_acc``: the most accurate depth
  that fits, ties to the faster;
- an accuracy floor alone (``min_acc``): the fastest depth that meets it (fewest MACs without a latency table),
  ties to the more accurate;
- ``prefer`` (``accuracy``, ``latency``, ``macs``) decides instead; remaining ties: fewer MACs, then the skip string.

    python examples/serve_all_depths.py all.onnx --port 8000
    curl -s localhost:8000/invocations -d '{"inputs": [[[[0.1, ...]]]], "params": {"min_acc": 98}}'
    -> {"skip": "TTTT", "acc1": 98.5, "macs": 5375232, "p50_ms": 0.21, "batch": 1, "logits": [[...]]}
    python examples/serve_all_depths.py all.onnx --choose '{"max_latency_ms": 4, "batch": 32}'   # no server

``GET /menu``: every depth with its figures. A bad request gets HTTP 400 with {"error": what is wrong}.
The latency table is the export machine's; ``--measure`` times every depth on this machine at start instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort

KEYS = ("max_latency_ms", "max_macs", "min_acc", "batch", "prefer")


class BadRequest(ValueError):
    pass


class Menu:
    """The depths of one all-depths graph, their figures, and the rule that answers a budget."""

    def __init__(self, path: str, threads: int = 1, measure: bool = False) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        meta = json.loads(self.session.get_modelmeta().custom_metadata_map["adaskip"])
        self.depths = {d["skip"]: d for d in meta["depths"]}
        self.shape = (meta["in_chans"], meta["image_size"], meta["image_size"])
        rows = self._measure(meta) if measure else meta.get("latency") or []
        self.p50 = {(r["skip"], r["batch_size"]): r["p50_ms"] for r in rows}  # ms per batch
        self.batches = list(dict.fromkeys(r["batch_size"] for r in rows))
        self.answers: dict[tuple, tuple[str, dict]] = {}

    def _measure(self, meta: dict) -> list[dict]:
        batches = sorted({r["batch_size"] for r in meta.get("latency") or []}) or [1]
        rows = []
        for b in batches:
            x = np.zeros((b, *self.shape), dtype=np.float32)
            for skip in self.depths:
                self.run(x, skip)  # warm-up
                times = []
                for _ in range(10):
                    start = time.perf_counter()
                    self.run(x, skip)
                    times.append(1000 * (time.perf_counter() - start))
                rows.append({"skip": skip, "batch_size": b, "p50_ms": float(np.median(times))})
        return rows

    def run(self, x: np.ndarray, skip: str) -> np.ndarray:
        flags = np.array([c == "T" for c in skip], dtype=bool)
        return self.session.run(["logits"], {"input": x, "skip": flags})[0]

    def pick(self, params: dict) -> tuple[str, dict]:
        """(the depth that answers ``params``, the figures it was chosen by); a BadRequest when nothing fits."""
        unknown = sorted(set(params) - {"skip", *KEYS})
        if unknown:
            raise BadRequest(f"unknown parameter(s) {unknown}: give skip or a budget ({', '.join(KEYS)})")
        budget = {k: params[k] for k in KEYS if params.get(k) is not None}
        if "skip" in params:
            if budget:
                raise BadRequest("skip and a budget were both given: pass one of them")
            skip = str(params["skip"]).upper()
            if skip not in self.depths:
                raise BadRequest(f"skip {params['skip']!r} is not one of this graph's depths: {sorted(self.depths)}")
            return skip, {}
        if not budget:
            return next(iter(self.depths)), {}  # the super-net
        key = tuple(sorted(budget.items()))
        if key not in self.answers:
            self.answers[key] = self._choose(**_checked(budget))
        return self.answers[key]

    def _choose(self, max_latency_ms=None, max_macs=None, min_acc=None, batch=None, prefer=None) -> tuple[str, dict]:
        capped = max_latency_ms is not None or max_macs is not None
        objective = prefer or ("accuracy" if capped else "latency" if self.batches else "macs")
        has_acc = all("acc1" in d for d in self.depths.values())
        if not has_acc and (min_acc is not None or objective == "accuracy"):
            raise BadRequest("this graph carries no top-1 (exported without a grid): give max_macs with prefer macs")
        if (max_latency_ms is not None or objective == "latency" or batch is not None) and not self.batches:
            raise BadRequest("this graph carries no latency table: give max_macs or min_acc, or serve with --measure")
        b = batch if batch is not None else (self.batches[0] if self.batches else None)
        if b is not None and b not in self.batches:
            raise BadRequest(f"batch {b}: no latency measured at that batch size; measured: {self.batches}")
        fits = []
        for skip, d in self.depths.items():
            p50 = self.p50.get((skip, b), math.inf) if b is not None else math.inf
            acc = d.get("acc1", -math.inf)
            if (max_latency_ms is None or p50 <= max_latency_ms) and (max_macs is None or d["macs"] <= max_macs):
                if min_acc is None or acc >= min_acc:
                    fits.append((skip, acc, p50, d["macs"]))
        if not fits:
            limits = {"max_latency_ms": max_latency_ms, "batch": b, "max_macs": max_macs, "min_acc": min_acc}
            given = {k: v for k, v in limits.items() if v is not None and (k != "batch" or max_latency_ms is not None)}
            raise BadRequest(f"no depth fits {json.dumps(given)}")
        order = {
            "accuracy": lambda f: (-f[1], f[2], f[3], f[0]),
            "latency": lambda f: (f[2], -f[1], f[3], f[0]),
            "macs": lambda f: (f[3], -f[1], f[0]),
        }[objective]
        skip, acc, p50, macs = min(fits, key=order)
        figures = {"macs": macs} | ({"acc1": acc} if has_acc else {})
        return skip, figures | ({"p50_ms": p50, "batch": b} if b is not None else {})

    def table(self) -> list[dict]:
        return [
            d | {f"p50_ms_b{b}": self.p50[(s, b)] for b in self.batches if (s, b) in self.p50}
            for s, d in self.depths.items()
        ]


def _checked(budget: dict) -> dict:
    """Numbers >= 0 (batch: an integer >= 1), prefer one of three; a string holding a number counts as one."""
    out = {}
    for key, value in budget.items():
        if key == "prefer":
            if value not in ("accuracy", "latency", "macs"):
                raise BadRequest(f"prefer must be accuracy, latency or macs, got {str(value)[:40]!r}")
            out[key] = value
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise BadRequest(f"{key} must be a number, got {str(value)[:40]!r}") from None
        if not math.isfinite(number) or number < (1 if key == "batch" else 0) or (key == "batch" and number % 1):
            raise BadRequest(f"{key} must be {'an integer >= 1' if key == 'batch' else 'a number >= 0'}, got {value!r}")
        out[key] = int(number) if key == "batch" else number
    return out


def handler(menu: Menu) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/menu":
                self._send(200, {"depths": menu.table(), "batches": menu.batches})
            else:
                self._send(404, {"error": "GET /menu or POST /invocations"})

        def do_POST(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                skip, figures = menu.pick(body.get("params") or {})
                x = np.asarray(body["inputs"], dtype=np.float32)
                if x.ndim != 4 or x.shape[1:] != menu.shape:
                    raise BadRequest(f"inputs must be (N, {', '.join(map(str, menu.shape))}), got {x.shape}")
            except (BadRequest, KeyError, ValueError, TypeError) as e:
                why = str(e) if isinstance(e, BadRequest) else f"a JSON body with inputs and params: {type(e).__name__}"
                self._send(400, {"error": why})
                return
            self._send(200, {"skip": skip, **figures, "logits": menu.run(x, skip).tolist()})

        def _send(self, code: int, answer: dict) -> None:
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet: one line per request is noise under load
            pass

    return Handler


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="all-depths ONNX graph (adaskip export --all-depths --format onnx)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: %(default)s)")
    p.add_argument("--measure", action="store_true", help="time every depth here instead of the file's table")
    p.add_argument("--choose", metavar="JSON", help="print the answer to these params and exit (no server)")
    args = p.parse_args(argv)
    menu = Menu(args.model, args.threads, args.measure)
    if args.choose is not None:
        try:
            skip, figures = menu.pick(json.loads(args.choose))
        except BadRequest as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(json.dumps({"skip": skip, **figures}))
        return 0
    server = ThreadingHTTPServer((args.host, args.port), handler(menu))
    print(f"serving {len(menu.depths)} depths of {args.model} on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
