"""An interrupted stage: SIGTERM during `train` leaves no output DVC could take as valid, ends its MLflow run
KILLED, and the re-run resumes from the latest checkpoint in the same MLflow run (real processes, real Ray)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adaskip.tracking import FINISHED, Tracker
from conftest import ROOT, TINY, merge

pytestmark = [pytest.mark.ray, pytest.mark.extended]


def _stage(project: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "train.py")], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_during_train_then_resume(tmp_path: Path):
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                   merge(TINY, {"train": {"workers": 1, "epochs": 3}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _stage(tmp_path)
    deadline = time.time() + 900
    while not list(tmp_path.glob(".ray_results/train-*/checkpoint_*")):  # wait for epoch 1's checkpoint
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: outputs of this stage were not written" in out
    assert not (tmp_path / "models" / "model.pt").exists() and not (tmp_path / "results" / "train_metrics.json").exists()
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", params["mlflow"]["experiment"])
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]

    proc = _stage(tmp_path)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "resuming from epoch" in out
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "results" / "train_metrics.json").is_file()
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == FINISHED  # the same run, continued
    steps = sorted(m.step for m in tracker.client.get_metric_history(runs[0].info.run_id, "val_acc_super"))
    assert steps[-1] == 3 and len(steps) <= 4  # every epoch logged; at most the interrupted one twice
