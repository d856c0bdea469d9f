"""The ``adaskip`` console command: one module per subcommand, each with its parser and a handler that calls the
library. Parsers import nothing heavy (``adaskip --help`` starts in well under a second); a handler imports what its
command needs when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..errors import AdaskipError
from . import doctor, export, profile, promote, recipe, select, study, sync, ui

COMMANDS = (doctor, recipe, export, select, profile, promote, sync, study, ui)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="adaskip", description="adaptive-depth networks: cluster and model tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except AdaskipError as e:
        from ..redact import redact

        print(f"error: {redact(str(e))}", file=sys.stderr)
        code = 2
    if args.func is doctor.run:  # the one command that starts Ray: stop it and exit without a slow finalisation
        from ..stage import exit_now

        exit_now(code)
    sys.exit(code)
