"""What every pipeline stage script shares: --params, logging, MLflow set-up, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

from .config import Params, load_params
from .console import VERBOSE_ENV, duration, verbose
from .errors import AdaskipError
from .redact import RedactingFilter, redact

log = logging.getLogger("adaskip")


def remove_outputs(*paths: str | os.PathLike) -> None:
    """Delete stale outputs first, so a failed or interrupted stage never leaves ones DVC takes as valid."""
    for p in map(Path, paths):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def tracker(params: Params):
    """The stage's Tracker: every run it starts is tagged with the DVC experiment it belongs to (a plain ``dvc repro``
    has none: ``workspace-<hash of the params that shape results>``, see ``experiment_label``)."""
    from .config import params_hash
    from .tracking import Tracker, resolve_uri
    from .tracking.views import experiment_label

    group = experiment_label(params_hash(params, "data", "model", "train", "tune", "evaluate"))
    tracking = Tracker(resolve_uri(params.mlflow.tracking_uri, Path.cwd()), params.mlflow.experiment, group)
    store = storage(params)
    _TRACKERS.append((tracking, store))  # closed by main: what it could not send is kept in the storage
    sync_spooled(store)
    return tracking


_TRACKERS: list = []  # (Tracker, Storage) of this stage


def sync_spooled(store) -> tuple[int, int]:
    """Send the MLflow records earlier stages kept in ``store`` (their tracking server did not answer)."""
    from .tracking.outbox import spooled
    from .tracking.tracker import sync

    if not spooled(store):
        return 0, 0
    sent, left = sync(store)
    log.info("MLflow: %d record(s) kept by earlier stages sent%s", sent, f", {left} still wait" if left else "")
    return sent, left


def _close_trackers(wait: float | None = None) -> None:
    while _TRACKERS:
        tracking, store = _TRACKERS.pop()
        try:
            tracking.close(store, wait)
        except Exception as e:  # noqa: BLE001  (the storage failed too: the stage's own outputs are written)
            log.error("MLflow records that %s did not take could not be kept in %s either: %s", tracking.uri, store, e)


def storage(params: Params):
    """Where Ray persists checkpoints, Tune state and caches (``cluster.storage``, ``ADASKIP_STORAGE``); default
    ``<project>/.ray_results``: git-ignored, not a DVC output."""
    from .orchestration.storage import Storage

    return Storage.resolve(params.cluster.storage, Path.cwd())


def start_ray(params: Params, tracking_uri: str, store) -> None:
    """Start a local Ray, or join the cluster ``RAY_ADDRESS`` names and check every node first (preflight): a
    node that cannot reach the tracking server, the storage ``store`` (the stage's :func:`storage`, resolved once)
    or the data stops the stage before any work."""
    from .orchestration import init_ray
    from .orchestration.cluster import joins_cluster

    init_ray()
    if joins_cluster():
        from .orchestration.preflight import require_ready, required_paths

        reports = require_ready(tracking_uri, store, required_paths(params))
        log.info("preflight: %d node(s) ready (%s)", len(reports), ", ".join(r.ip for r in reports))


def _sigterm(*_: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


class StageResult(ABC):
    """What a stage's ``run`` returns: its results as typed fields (each stage's own dataclass), which a test can
    read in process, and the one summary line ``main`` prints from them."""

    @abstractmethod
    def summary(self) -> str: ...


Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[Params, argparse.Namespace], StageResult]


def stage_parser(description: str, configure: Configure = lambda p: None) -> argparse.ArgumentParser:
    """Every stage's options: ``--params``, ``-v`` and the stage's own (``configure``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=f"debug logging and Ray's full output (as {VERBOSE_ENV}=1 does, e.g. under dvc repro)",
    )
    configure(parser)
    return parser


def main(description: str, run: Run, configure: Configure = lambda p: None) -> None:
    """Parse ``--params``, validate them (the schema: a stage that builds models checks them itself, once, with
    ``build.check_model``), run the stage; known errors print one line and exit non-zero. The result ``run``
    returns ends the stage's output as one line: ``<stage>: <its summary> in <time>``."""
    from .orchestration.cluster import configure_ray_env

    configure_ray_env()  # before anything imports ray
    args = stage_parser(description, configure).parse_args()
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # before Ray starts: its local workers inherit it
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for handler in logging.getLogger().handlers:  # no credential in a log line, -v's debug lines included
        handler.addFilter(RedactingFilter())
    if not verbose():  # Ray's start-up and MLflow's database/registry notices: WARNING and above only
        logging.getLogger("ray").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level when imported
    # MLflow prints "View run ... at ..." and "View experiment at ..." at every run's end (a study: two per cell);
    # a stage logs one line with its own run's address instead (Tracker.run)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.perf_counter()
    try:
        result = run(load_params(args.params), args)
        _close_trackers()  # its records sent, or kept (and said so) before the summary line
        stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
        print(f"{stage}: {result.summary()} in {duration(time.perf_counter() - started)}", flush=True)
    except AdaskipError as e:
        _close_trackers()
        print(f"error: {redact(str(e))}", file=sys.stderr)
        exit_now(2)
    except KeyboardInterrupt:
        _close_trackers(wait=5)
        print("interrupted: outputs of this stage were not written; re-run to resume", file=sys.stderr)
        exit_now(130)
    exit_now(0)


def exit_now(code: int) -> None:
    """Stop the Ray cluster this stage joined or started, then exit without Python's finalisation, which with
    Ray's threads still alive took a minute or more on 2 cores (outputs are written and fsynced and MLflow runs
    ended by now). Stages that never started Ray exit normally."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        sys.exit(code)
    ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
