"""``adaskip promote``: point the registry's aliases at a version (the only way an alias another model holds moves)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "promote",
        help="point @super, @base and @fastest-within-1pct at a registered version",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The evaluate stage points an alias at the version it evaluated only where no version holds\n"
        "it yet (the first registration) or the same model does; an experiment never moves what a server may\n"
        "be serving. This command moves them: each alias evaluate offered VERSION (its adaskip.candidate.*\n"
        "tags) goes to the version serving that sub-network from VERSION's model; the version it leaves loses\n"
        "its adaskip.alias.* tag.",
        epilog="examples:\n"
        "  adaskip promote 7                 # every alias version 7 was offered\n"
        "  adaskip promote 7 --alias base    # only @base\n"
        "exit 0: moved; 2: no such version, never evaluated, or an alias it was not offered (one line)",
    )
    s.add_argument("version", metavar="VERSION", help="registered version number")
    s.add_argument("--alias", nargs="+", metavar="A", help="only these aliases (default: all it was offered)")
    s.add_argument("--model", help="registered model name (default: params.yaml's mlflow.registered_model)")
    s.add_argument("--params", default="params.yaml", help="for the store and the name (default: %(default)s)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import load_params
    from ..errors import AdaskipError
    from ..tracking import Tracker, resolve_uri

    params = load_params(args.params)
    name = args.model or params.mlflow.registered_model
    if not name:
        raise AdaskipError("no registered model: give --model NAME (params.yaml's mlflow.registered_model is null)")
    tracking = Tracker(resolve_uri(params.mlflow.tracking_uri, Path.cwd()), params.mlflow.experiment)
    for alias, version in tracking.promote(name, args.version, args.alias).items():
        print(f"{name}@{alias} -> version {version}")
    return 0
