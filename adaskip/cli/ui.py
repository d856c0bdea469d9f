"""``adaskip ui``: MLflow's UI over the project's tracking store, opened on the training runs (not its GenAI pages)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "ui",
        help="MLflow's UI over the project's store, opened on the training runs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve MLflow's UI over the tracking store params.yaml names (mlflow.tracking_uri, or\n"
        "MLFLOW_TRACKING_URI; default: mlflow.db in the project) without MLflow's GenAI job workers, and print\n"
        "the address of the experiment's training runs and of the chart of every evaluate run's trade-off\n"
        "curve. A tracking server is its own UI: its addresses are printed and nothing is started.\n"
        "Stop with Ctrl-C.",
        epilog="examples:\n"
        "  adaskip ui                        # http://127.0.0.1:5000, the experiment's runs\n"
        "  adaskip ui --port 5050 --host 0.0.0.0",
    )
    s.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    s.add_argument("--workers", type=int, default=1, help="server processes (default: %(default)s; one person)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ..config import load_params
    from ..tracking import resolve_uri
    from ..tracking.views import ui_base

    params = load_params(args.params)
    uri = resolve_uri(params.mlflow.tracking_uri, Path.cwd())
    remote = uri.startswith(("http://", "https://"))
    base = ui_base(uri) if remote else f"http://{'127.0.0.1' if args.host == '0.0.0.0' else args.host}:{args.port}"
    experiment_id = _experiment_id(uri, params.mlflow.experiment)
    if remote:
        _print_addresses(base, experiment_id)
        return 0
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # MLflow's GenAI job workers (15 processes, 3 GB): not used
        # one starlette notice per server process, nothing a user can act on
        "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore:starlette.middleware.wsgi is deprecated",
    }
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host]
    cmd += ["--port", str(args.port), "--workers", str(args.workers), "--uvicorn-opts", "--no-access-log"]
    server = subprocess.Popen(cmd, env=env)
    try:
        if not _wait_until_up(base, server):
            return server.wait() or 1
        _print_addresses(base, experiment_id)
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C: the server stops with us
        server.terminate()
        server.wait(timeout=30)
        return 0


def _experiment_id(uri: str, experiment: str) -> str | None:
    from mlflow.tracking import MlflowClient

    from ..tracking import check_reachable

    check_reachable(uri)
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    return exp.experiment_id if exp else None


def _wait_until_up(base: str, server, timeout: float = 120.0) -> bool:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            return True
        except OSError:
            time.sleep(0.5)
    return False


def _print_addresses(base: str, experiment_id: str | None) -> None:
    from ..tracking.views import chart_url, runs_url

    if experiment_id is None:
        print(f"MLflow UI: {base}/#/experiments?workflowType=machine_learning (no adaskip runs yet)", flush=True)
        return
    print(f"MLflow UI, the training runs: {runs_url(base, experiment_id)}", flush=True)
    print(f"every evaluate run's trade-off curve, one chart: {chart_url(base, experiment_id, 'evaluate')}", flush=True)
