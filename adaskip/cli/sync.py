"""``adaskip sync``: send the MLflow records stages kept because their tracking server did not answer."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sync",
        help="send MLflow records kept while the tracking server did not answer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A stage that ends while its tracking server does not answer writes its outputs and keeps\n"
        "the records it could not send (metrics, runs, the model's registration) in the run storage's\n"
        "pending/ folder. Every stage sends them as it starts; this command sends them now, oldest first, to\n"
        "the tracking server they were meant for, and removes each folder once all of it is sent.",
        epilog="examples:\n"
        "  adaskip sync                      # the storage params.yaml (or ADASKIP_STORAGE) names\n"
        "  adaskip sync --wait 30\n"
        "exit 0: nothing waits any more; 1: records still wait (the server did not answer in time)",
    )
    s.add_argument("--params", default="params.yaml", help="for the run storage (default: %(default)s)")
    s.add_argument(
        "--wait", type=float, default=None, metavar="S", help="seconds to wait for the server (default: 300)"
    )
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from ..config import load_params
    from ..orchestration.storage import Storage
    from ..tracking.outbox import spooled
    from ..tracking.tracker import sync

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = load_params(args.params)
    store = Storage.resolve(params.cluster.storage, Path.cwd())
    if not spooled(store):
        print(f"nothing waits in {store}/pending")
        return 0
    sent, left = sync(store, args.wait)
    print(f"{sent} MLflow record(s) sent" + (f"; {left} still wait in {store}/pending" if left else ""))
    return 1 if left else 0
