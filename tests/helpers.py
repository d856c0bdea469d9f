"""What tests share that is not a fixture (fixtures are in conftest.py): the project root, the tiny params every
quick pipeline run applies, the params merge rule, the test bucket's name, Ray Train's checkpoint record, a free port,
waiting until something is ready, and `mlflow models serve` on loopback (benchmarks/serve_load.py uses it too)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from adaskip.config import merge_params as merge

__all__ = [
    "BUCKET",
    "PROGRAMS",
    "ROOT",
    "TINY",
    "checkpoint_recorded",
    "free_port",
    "latest_checkpoint",
    "local_server",
    "merge",
    "new_project",
    "run_stage",
    "sh",
    "tiny_vit",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "tests" / "programs"  # Python programs tests run in a process of their own
BUCKET = "adaskip-test"  # the moto S3 server's bucket (conftest.s3_server)

# Small enough for seconds per epoch on 2 cores, big enough to have 4 stages with choices of split.
TINY: dict[str, Any] = {
    "data": {"image_size": 16},
    "model": {"name": "resnet34", "kwargs": {"resnet": {"channels": [8, 16, 32, 64]}, "swin": {"embed_dim": 24}}},
    "train": {"epochs": 2, "batch_size": 128, "lr": 0.1, "workers": 2},
    "tune": {"num_samples": 2, "epochs": 1},  # splits: auto, from the model's stage depths
    "evaluate": {"latency_reps": 2},
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latest_checkpoint(run: Path) -> Any:
    """The checkpoint Ray Train's controller recorded last for a run folder (None before the first): it resumes from
    those only (a checkpoint folder alone, written by the workers before the controller takes it, is not enough)."""
    try:
        return json.loads((run / "checkpoint_manager_snapshot.json").read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None


def checkpoint_recorded(root: Path, run_glob: str) -> bool:
    """Whether Ray Train's controller has recorded a checkpoint of a run under ``root`` (:func:`latest_checkpoint`)."""
    return any(latest_checkpoint(run) for run in root.glob(run_glob))


def run_stage(name: str, *argv: str) -> Any:
    """Stage ``pipelines/<name>.py``'s ``run`` in this process and directory, its arguments parsed as its ``main``
    parses them: returns the stage's typed result, or raises what the stage raises (a ConfigError, ...). For stages
    that start no Ray (tests of those that do run them as DVC does, in a subprocess)."""
    import runpy

    from adaskip.config import load_params
    from adaskip.stage import stage_parser

    script = runpy.run_path(str(ROOT / "pipelines" / f"{name}.py"))
    args = stage_parser(script["__doc__"], script.get("configure", lambda p: None)).parse_args(argv)
    return script["run"](load_params(args.params), args)


PROJECT_FILES = ["adaskip", "pipelines", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config"]
PROJECT_FILES += [".dvc/.gitignore"]


def sh(cwd: Path, *cmd: str, timeout: float = 1500, **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with this environment's executables first on PATH (dvc, adaskip) and the project's own
    MLflow store (no MLFLOW_TRACKING_URI); a non-zero exit fails the test with the end of its output."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def new_project(repo: Path, overrides: dict[str, Any]) -> Path:
    """A fresh git + DVC project at ``repo`` holding this checkout's pipeline, with params.yaml's values and
    ``overrides`` over them, committed."""
    for name in PROJECT_FILES:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd)
    return repo


def wait_until(
    ready: Callable[[], Any],
    timeout: float,
    what: str,
    alive: Callable[[], bool] = lambda: True,
    detail: Callable[[], str] = lambda: "",
    every: float = 1.0,
) -> Any:
    """Call ``ready`` every 0.2 s, then less often up to every ``every`` s, until it returns something true (an
    exception counts as not yet) and return that; a RuntimeError naming ``what`` (and ``detail()``, e.g. the tail of a
    log) after ``timeout`` seconds, or as soon as ``alive`` says the process it waits for is gone."""
    deadline, pause, last = time.monotonic() + timeout, min(0.2, every), None
    while True:
        try:
            if result := ready():
                return result
        except Exception as e:  # not ready yet: a refused connection, a missing file
            last = e
        if not alive():
            raise RuntimeError(f"{what}: the process it waits for has exited ({last!r})\n{detail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:g} s ({last!r})\n{detail()}")
        time.sleep(pause)
        pause = min(every, pause * 1.5)


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (loopback)
        return True


@contextlib.contextmanager
def local_server(tracking_uri: str, model_uri: str, log_file: Path, workers: int = 1) -> Iterator[str]:
    """`mlflow models serve` of ``model_uri`` on a free loopback port, one torch thread per worker, with this
    environment's ``uvicorn``; yields the invocations URL once /ping answers, and stops the server after."""
    port, bindir = free_port(), str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "OMP_NUM_THREADS": "1",
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
    }
    command = [str(Path(bindir) / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "-w", str(workers)]
    with open(log_file, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_until(
                    lambda: _answers(f"http://127.0.0.1:{port}/ping"),
                    180,
                    "mlflow models serve",
                    lambda: server.poll() is None,
                )
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n{log_file.read_text()[-3000:]}") from None
            yield f"http://127.0.0.1:{port}/invocations"
        finally:
            os.killpg(server.pid, 15)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()


def tiny_vit(num_classes: int, seed: int = 0) -> Any:
    """A DeiT with 4 blocks in 2 stages (1 mandatory + 1 skippable each), 32 px, no BatchNorm, dropout 0."""
    import torch

    import adaskip

    torch.manual_seed(seed)
    return adaskip.create_model(
        "deit_tiny_patch16_224",
        num_classes=num_classes,
        img_size=32,
        patch_size=8,
        depth=4,
        embed_dim=32,
        num_heads=2,
        num_stages=2,
        drop_rate=0.0,
        drop_path_rate=0.0,
        attn_drop_rate=0.0,
        proj_drop_rate=0.0,
    )
