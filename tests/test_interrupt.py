"""An interrupted stage leaves no output DVC could take as valid and ends its MLflow run KILLED; the re-run
resumes in the same MLflow run: `train` (SIGTERM) from its latest checkpoint, `tune` (Ctrl-C) with its
finished trials kept, a study's `cells` (SIGTERM mid-cell) with only the remaining epochs trained (real processes,
real Ray)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from adaskip.build import build_model
from adaskip.files import write_json
from adaskip.tracking import FINISHED, KILLED, RUNNING, Tracker
from helpers import ROOT, checkpoint_recorded, merge, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.subprocess, pytest.mark.extended]


def _stage(project: Path, stage: str = "train", *args: str) -> subprocess.Popen:
    """The stage script in its own session (process group), as a terminal runs it: Ctrl-C = SIGINT to the group.
    SIGINT is handled by default there even if the test runner ignores it (a background job of a shell without job
    control, as CI may start it, passes an ignored SIGINT on to every child). Output goes to a file: a pipe nobody
    reads while the test polls fills up and blocks the stage."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    with open(project / f"{stage}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "pipelines" / f"{stage}.py"), *args],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def _output(project: Path, stage: str = "train") -> str:
    return (project / f"{stage}.log").read_text()


def _project(tmp_path: Path, tiny_raw: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    params = merge(tiny_raw, override)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def test_sigterm_during_train_then_resume(tmp_path: Path, tiny_raw: dict[str, Any]):
    params = _project(
        tmp_path, tiny_raw, {"data": {"image_size": 32}, "train": {"workers": 1, "epochs": 6}}
    )  # ~1 s/epoch
    t = params["train"]  # what the tune stage would have chosen: train reads it
    write_json(
        {"alpha": t["alpha"], "temperature": t["temperature"], "split": [2, 2, 3, 2]},
        tmp_path / "results" / "best_config.json",
    )
    proc = _stage(tmp_path)
    running, log = (lambda: proc.poll() is None), (lambda: _output(tmp_path)[-3000:])
    # epoch 1's checkpoint, once Ray Train has recorded it
    wait_until(lambda: checkpoint_recorded(tmp_path, ".ray_results/train-*"), 900, "a checkpoint", running, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 130, _output(tmp_path)[-3000:]
    out = _output(tmp_path)
    assert "interrupted: outputs of this stage were not written" in out
    assert (
        not (tmp_path / "models" / "model.pt").exists() and not (tmp_path / "results" / "train_metrics.json").exists()
    )
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", params["mlflow"]["experiment"])
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]

    proc = _stage(tmp_path)
    assert proc.wait(timeout=900) == 0, _output(tmp_path)[-3000:]
    out = _output(tmp_path)
    assert re.search(r"train-\w+: resumes after epoch \d of 6", out), out[-3000:]
    assert "Traceback" not in out, out[-3000:]  # a local Ray: no autoscaler requests timing out (issue 23)
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "results" / "train_metrics.json").is_file()
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == FINISHED  # the same run, continued
    steps = sorted(m.step for m in tracker.client.get_metric_history(runs[0].info.run_id, "val_acc_super"))
    assert steps[-1] == 6 and len(steps) <= 7  # every epoch logged; at most the interrupted one twice


def test_sigterm_mid_cell_then_the_study_trains_only_the_remaining_epochs(tmp_path: Path, tiny_raw: dict[str, Any]):
    """A study stage stopped (SIGTERM) in the middle of its cells: exit 130, no results file, the cells' MLflow runs
    KILLED. The re-run resumes each cell from its latest epoch checkpoint in the study's cache, says from which
    epoch, trains only the epochs left, and logs into the same MLflow runs, each epoch once."""
    epochs = 8
    _project(tmp_path, tiny_raw, {"data": {"image_size": 32}})
    study = {
        "name": "s",
        "seeds": [0, 1],
        "epochs": epochs,
        "overrides": {"train": {"workers": 1, "cpus_per_worker": 1}},
        "variants": {"adn": {}},
    }
    (tmp_path / "studies" / "s").mkdir(parents=True)
    (tmp_path / "studies" / "s" / "study.yaml").write_text(yaml.safe_dump(study))
    args = ("--study", "studies/s/study.yaml")
    proc = _stage(tmp_path, "cells", *args)
    # mid-cell: a few epochs in, and Ray Train has recorded a checkpoint
    wait_until(
        lambda: (
            re.search(rf"epoch +3/{epochs} ", _output(tmp_path, "cells"))
            and checkpoint_recorded(tmp_path, ".ray_results/study-s/cell-*")
        ),
        900,
        "a cell three epochs in, with a checkpoint",
        lambda: proc.poll() is None,
        lambda: _output(tmp_path, "cells")[-3000:],
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 130, _output(tmp_path, "cells")[-3000:]
    first = _output(tmp_path, "cells")
    assert "interrupted: outputs of this stage were not written" in first
    assert not (tmp_path / "studies" / "s" / "results" / "cells" / "adn.csv").exists()
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tiny_raw["mlflow"]["experiment"])
    [parent] = tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` = 'study'")
    assert parent.info.status == KILLED and {r.info.status for r in tracker.children(parent.info.run_id)} == {KILLED}

    proc = _stage(tmp_path, "cells", *args)
    assert proc.wait(timeout=900) == 0, _output(tmp_path, "cells")[-3000:]
    second = (
        _output(tmp_path, "cells")[len(first) :]
        if _output(tmp_path, "cells").startswith(first)
        else _output(tmp_path, "cells")
    )
    resumed = [int(m) for m in re.findall(rf"adn-seed\d: resumes after epoch (\d+) of {epochs}", second)]
    assert resumed and all(0 < e < epochs for e in resumed), second[-3000:]
    assert "Traceback" not in second, second[-3000:]
    trained = len(re.findall(rf"epoch +\d+/{epochs} ", second))
    kept = sum(resumed)
    print(f"re-run: cells resumed after epochs {sorted(resumed)}; {trained} epochs trained of {2 * epochs}")
    assert trained == 2 * epochs - kept, second[-3000:]  # only the epochs left
    rows = pd.read_csv(tmp_path / "studies" / "s" / "results" / "cells" / "adn.csv")
    assert sorted(rows.seed.unique()) == [0, 1]
    [parent] = tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` = 'study'")
    children = tracker.children(parent.info.run_id)
    assert parent.info.status == FINISHED and len(children) == 2 and {r.info.status for r in children} == {FINISHED}
    for run in children:  # the same runs, continued: every epoch, each once
        steps = sorted(m.step for m in tracker.client.get_metric_history(run.info.run_id, "val_acc_super"))
        assert steps == list(range(1, epochs + 1)), steps


def _trial_states(project: Path) -> dict[str, str]:
    """Trial id -> status in the sweep's latest saved experiment state (empty until Tune first saves it)."""
    states = sorted(project.glob(".ray_results/tune-*/experiment_state-*.json"))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
    except ValueError:  # caught mid-write
        return {}
    return {t["trial_id"]: t["status"] for t in (json.loads(d[0]) for d in trials)}


def _result_lines(project: Path) -> dict[str, int]:
    """Trial directory -> reports it holds (a re-run trial would append to its result.json)."""
    return {p.parent.name: len(p.read_text().splitlines()) for p in project.glob(".ray_results/tune-*/*/result.json")}


def test_ctrl_c_during_tune_keeps_finished_trials(tmp_path: Path, tiny_raw: dict[str, Any]):
    # One trial at a time, each (about 30 s) well beyond Tune's experiment-state period (10 s, then written to
    # the storage folder asynchronously): the state that shows the first trial finished comes while the second runs.
    params = _project(
        tmp_path,
        tiny_raw,
        {
            "data": {"image_size": 32},
            "tune": {"num_samples": 2, "max_concurrent_trials": 1, "epochs": 30, "grace_period": 30},
        },
    )
    (tmp_path / "results").mkdir()  # the train stage's metrics, which the sweep's summary quotes
    (tmp_path / "results" / "train_metrics.json").write_text(json.dumps({"objective": 50.0}))
    proc = _stage(tmp_path, "tune")
    wait_until(  # one trial done, the other one next
        lambda: "TERMINATED" in _trial_states(tmp_path).values(),
        900,
        "a finished trial",
        lambda: proc.poll() is None,
        lambda: _output(tmp_path, "tune")[-3000:],
    )
    states = _trial_states(tmp_path)
    done = [t for t, s in states.items() if s == "TERMINATED"]
    assert len(done) == 1, states  # the other trial still to run or running when Ctrl-C comes
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    assert proc.wait(timeout=300) == 130, _output(tmp_path, "tune")[-3000:]
    out = _output(tmp_path, "tune")
    assert "interrupted: outputs of this stage were not written" in out
    assert (
        not (tmp_path / "results" / "tune_trials.csv").exists()
        and not (tmp_path / "results" / "best_config.json").exists()
    )
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", params["mlflow"]["experiment"])
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` = 'tune'")
    assert [r.info.status for r in parents] == [KILLED]
    assert RUNNING not in [r.info.status for r in tracker.children(parents[0].info.run_id)]
    reports = _result_lines(tmp_path)

    proc = _stage(tmp_path, "tune")
    assert proc.wait(timeout=900) == 0, _output(tmp_path, "tune")[-3000:]
    out = _output(tmp_path, "tune")
    assert "resuming the sweep" in out
    trials = pd.read_csv(tmp_path / "results" / "tune_trials.csv", dtype={"trial_id": str})
    assert len(trials) == 2 and trials.error.isna().all() and set(done) <= set(trials.trial_id)
    assert json.loads((tmp_path / "results" / "best_config.json").read_text())["trial_id"] in set(trials.trial_id)
    finished = {d: n for d, n in _result_lines(tmp_path).items() if any(t in d for t in done)}
    assert finished and all(reports[d] == n for d, n in finished.items())  # the finished trial was not run again
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` = 'tune'")
    assert len(parents) == 1 and parents[0].info.status == FINISHED  # the same parent run, continued
    children = tracker.children(parents[0].info.run_id)
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(trials.trial_id)  # one run per trial
    assert {r.info.status for r in children} == {FINISHED}


def test_ctrl_c_during_evaluate_keeps_finished_subtrees(tmp_path: Path, tiny_raw: dict[str, Any]):
    from adaskip.config import Params
    from adaskip.training import save_atomic

    # 4 subtrees on 2 CPUs, two at a time, each a few seconds (latency reps at 32 px): Ctrl-C after the first ones
    # lands while others are running
    params = _project(
        tmp_path,
        tiny_raw,
        {"data": {"image_size": 32}, "evaluate": {"parallelism": 4, "latency_reps": 1000, "latency_batch_sizes": [1]}},
    )
    net = build_model(Params.model_validate(params), num_classes=10)  # untrained weights do
    save_atomic({"spec": net.spec, "state_dict": net.state_dict()}, tmp_path / "models" / "model.pt")
    proc = _stage(tmp_path, "evaluate")
    wait_until(
        lambda: list(tmp_path.glob(".ray_results/evaluate-*/*.csv")),
        600,
        "a finished subtree of the grid",
        lambda: proc.poll() is None,
        lambda: _output(tmp_path, "evaluate")[-3000:],
    )
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=300) == 130, _output(tmp_path, "evaluate")[-3000:]
    assert "interrupted: outputs of this stage were not written" in _output(tmp_path, "evaluate")
    assert not (tmp_path / "results" / "eval_grid.csv").exists()
    saved = list(tmp_path.glob(".ray_results/evaluate-*/*.csv"))
    assert 1 <= len(saved) < 4, saved
    marked = set()
    for f in saved:  # a marker only a reused file can carry into the final grid
        part = pd.read_csv(f, dtype={"skip": str}).assign(acc1=-1.0)
        part.to_csv(f, index=False)
        marked |= set(part.skip)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", params["mlflow"]["experiment"])
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` = 'evaluate'")
    assert [r.info.status for r in parents] == [KILLED]

    proc = _stage(tmp_path, "evaluate")
    assert proc.wait(timeout=600) == 0, _output(tmp_path, "evaluate")[-3000:]
    grid = pd.read_csv(tmp_path / "results" / "eval_grid.csv", dtype={"skip": str}).set_index("skip")
    assert len(grid) == 2**net.num_stages
    assert set(grid.index[grid.acc1 == -1.0]) == marked  # finished subtrees kept, the others evaluated
    assert not list(tmp_path.glob(".ray_results/evaluate-*"))  # done: nothing left to resume
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` = 'evaluate'")
    assert len(parents) == 1 and parents[0].info.status == FINISHED  # the same parent run, continued
    children = tracker.children(parents[0].info.run_id)
    assert sorted(r.data.tags["skip"] for r in children) == sorted(grid.index)
    assert {r.info.status for r in children} == {FINISHED}
