"""End to end: the real `dvc repro` in a fresh git repo on tiny settings, then the contract files and MLflow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import yaml

from adaskip.build import tune_splits
from adaskip.tracking import FINISHED, Tracker

from helpers import ROOT, TINY, free_port, merge, new_project, sh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.subprocess,
]  # dvc repro and stage scripts on a `ray start` head
EPOCHS = 4


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A Ray head started with `ray start`, as on a cluster: every stage joins it through RAY_ADDRESS instead of
    starting and stopping a local Ray of its own (which also costs each stage start-up time on 2 cores). Started
    with --block in a session of its own and stopped by signalling that session: `ray stop` would also end every
    other Ray on the machine, the test session's own cluster included."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: AF_UNIX socket paths
    ray = str(Path(sys.executable).parent / "ray")
    log = Path(tmp) / "start.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                ray,
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                f"--object-store-memory={300 * 2**20}",
                f"--temp-dir={tmp}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 300
        while "block forever" not in log.read_text():  # printed once the head is up
            assert head.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)  # Ray stops its processes gracefully, or they are killed
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh git + DVC project holding this checkout's pipeline, with tiny params: one training worker here (2-worker
    DDP is covered by tests/test_ray.py, and each worker costs start-up time); 4 epochs (TINY's 2, cosine to 0, leave
    the tiny net near 30 %, too close to chance to tell a broken pipeline)."""
    return new_project(tmp_path_factory.mktemp("proj"), merge(TINY, {"train": {"workers": 1, "epochs": EPOCHS}}))


@pytest.fixture(scope="module")
def reproduced(project: Path, ray_address: str) -> Path:
    """The project after `dvc repro`: tests read it and never change it (those that run more copy it first)."""
    r = sh(project, "dvc", "repro", RAY_ADDRESS=ray_address)
    REPRO_OUTPUT.append(r.stdout + r.stderr)
    return project


REPRO_OUTPUT: list[str] = []  # what the reproduced fixture's `dvc repro` printed


def _copy(project: Path, dst: Path) -> Path:
    """A copy of the reproduced project (git, DVC cache, MLflow store) that a test may change; Ray's run state
    (.ray_results) stays behind: every run here has other params, so it would not resume any of it."""
    shutil.copytree(project, dst, symlinks=True, ignore=shutil.ignore_patterns(".ray_results"))
    return dst


def test_repro_output_reads_well(reproduced: Path):
    """What a person sees: no traceback, one line per ended tune trial, evaluate's registry aliases."""
    (out,) = REPRO_OUTPUT
    assert "Traceback" not in out and "UserWarning" not in out, out[-3000:]
    for i in (1, 2):  # tune.num_samples: 2
        assert f"tune: trial {i}/2 finished: alpha " in out, out[-3000:]
    assert "adaskip version 1: @super -> 1 (FFFF), @base -> 2 (TTTT), @fastest-within-1pct -> " in out, out[-3000:]
    assert "trade-off curves of every evaluate run: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=" in out


def test_contract_files(reproduced: Path):
    grid = pd.read_csv(reproduced / "results" / "eval_grid.csv")
    assert list(grid.columns[:1]) == ["skip"]
    assert set(grid.columns) >= {"skip", "macs", "params", "acc1", "acc5", "latency_ms", "pareto"}
    assert len(grid) == 16 and grid.skip.str.fullmatch("[TF]{4}").all()
    assert grid.pareto.dtype == bool and grid.pareto.any()
    by = grid.set_index("skip")
    assert by.macs["FFFF"] > by.macs["TFFF"] > by.macs["TTFF"] > by.macs["TTTF"] > by.macs["TTTT"]
    assert (by.latency_ms > 0).all()
    for b in (1, 32):  # params.yaml's evaluate.latency_batch_sizes
        assert (by[f"latency_p50_ms_b{b}"] <= by[f"latency_p90_ms_b{b}"]).all()
    assert (by.latency_ms == by.latency_p50_ms_b1).all() and by.device.str.startswith("cpu:").all()
    latency = pd.read_csv(reproduced / "results" / "latency.csv", dtype={"skip": str})
    assert list(latency.columns) == ["skip", "device", "batch_size", "threads", "p50_ms", "p90_ms"]
    assert len(latency) == 2 * 16 and set(latency.skip) == set(grid.skip)
    metrics = json.loads((reproduced / "results" / "metrics.json").read_text())
    for key in ("super_acc1", "base_acc1", "val_acc_super", "val_acc_base", "tune_best_objective"):
        assert metrics.get(key) is not None, (key, metrics)
    assert metrics["super_acc1"] > 30 and metrics["base_acc1"] > 30  # 10 classes: chance is 10 %
    png = (reproduced / "results" / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    best = json.loads((reproduced / "results" / "best_config.json").read_text())
    assert 0 <= best["alpha"] <= 1 and best["split"] in TINY_SPLITS


TINY_SPLITS = [[2, 2, 3, 2], [1, 1, 2, 1], [2, 3, 4, 2]]  # tune.splits: auto for resnet34's [3, 4, 6, 3] blocks


def test_mlflow_runs(reproduced: Path):
    tracker = Tracker(f"sqlite:///{reproduced / 'mlflow.db'}", "adaskip")
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    assert runs and all(r.info.status in (FINISHED, "KILLED") for r in runs), [
        (r.info.run_name, r.info.status) for r in runs
    ]
    stages = {r.data.tags.get("adaskip.stage"): r for r in runs if "adaskip.stage" in r.data.tags}
    assert set(stages) == {"train", "tune", "evaluate", "report"}
    assert all(r.info.status == FINISHED for r in stages.values())
    train = stages["train"]
    assert len(tracker.client.get_metric_history(train.info.run_id, "val_acc_super")) == EPOCHS  # one per epoch
    best = json.loads((reproduced / "results" / "best_config.json").read_text())  # tune ran first; train used it
    assert float(train.data.params["train.alpha"]) == best["alpha"] and best["source"] == "tune"
    trained = json.loads((reproduced / "results" / "train_metrics.json").read_text())["trained_with"]
    keys = ("alpha", "temperature", "split")
    assert {k: trained[k] for k in keys} == {k: best[k] for k in keys}
    assert (trained["model"], trained["data"], trained["epochs"]) == ("resnet34", "digits", EPOCHS)
    assert stages["tune"].info.start_time < train.info.start_time
    grid_children = tracker.children(stages["evaluate"].info.run_id)
    assert sorted(r.data.tags["skip"] for r in grid_children) == sorted(
        pd.read_csv(reproduced / "results" / "eval_grid.csv").skip
    )
    assert all({"acc1", "macs", "latency_ms", "latency_p50_ms_b32"} <= set(r.data.metrics) for r in grid_children)
    assert len(tracker.children(stages["tune"].info.run_id)) == 2  # one per trial
    # evaluate's registry entries: the grid beside the trained version, its aliases on versions serving each default
    from adaskip.select import aliases

    version = str(json.loads((reproduced / "results" / "train_metrics.json").read_text())["registered_model_version"])
    assert tracker.model_version("adaskip", reproduced / "models" / "model.pt") == version  # not an alias's version
    grid = pd.read_csv(reproduced / "results" / "eval_grid.csv", dtype={"skip": str})
    for alias, skip in aliases(grid).items():
        mv = tracker.client.get_model_version_by_alias("adaskip", alias)
        assert mv.tags[f"adaskip.alias.{alias}"] == skip and mv.tags.get("adaskip.skip", "FFFF") == skip
        assert (str(mv.version) == version) == (skip == "FFFF") and mv.source == tracker.client.get_model_version(
            "adaskip", version
        ).source
    model, resolved = tracker.download_model("models:/adaskip@base")
    assert resolved == ("adaskip", "2") and model.is_file()
    attached = pd.read_csv(model.parent.parent / "adaskip" / "eval_grid.csv", dtype={"skip": str})
    assert attached.skip.tolist() == grid.skip.tolist() and (attached.acc1 == grid.acc1).all()


def test_runs_say_what_they_trained(reproduced: Path):
    """One `dvc repro`'s stage runs share their experiment's tag; train, evaluate and report runs are named by what
    was trained and carry it as params (from the model file, not params.yaml); evaluate's parent run carries the
    headlines and its trade-off curve (the Pareto front at step = MACs), which its children do not; metrics.json
    says what was trained; the plot data DVC compares has no machine-dependent column; the registered version says
    what it trained."""
    tracker = Tracker(f"sqlite:///{reproduced / 'mlflow.db'}", "adaskip")
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` != ''", max_results=100)
    stages = {r.data.tags["adaskip.stage"]: r for r in runs}
    (group,) = {r.data.tags["adaskip.experiment"] for r in stages.values()}
    assert group.startswith("workspace-")  # a plain dvc repro: no DVC_EXP_NAME
    best = json.loads((reproduced / "results" / "best_config.json").read_text())
    split = "-".join(map(str, best["split"]))
    trained = f"α{best['alpha']:.2f} T{best['temperature']:.2f} split {split} resnet34"
    for stage in ("train", "evaluate", "report"):
        r = stages[stage]
        assert r.info.run_name == f"{stage} {trained} ({group})"
        assert r.data.params["train.alpha"] == str(best["alpha"]) and r.data.params["model.split"] == str(best["split"])
    assert stages["tune"].info.run_name == f"tune alpha, temperature, split ({group})"
    evaluate = stages["evaluate"].info.run_id
    assert {"super_acc1", "base_acc1", "base_macs_ratio", "test_tradeoff_auc"} <= set(stages["evaluate"].data.metrics)
    grid = pd.read_csv(reproduced / "results" / "eval_grid.csv").sort_values(["macs", "acc1"], ascending=[True, False])
    front = [(m, a) for i, (m, a) in enumerate(zip(grid.macs, grid.acc1)) if all(a > b for b in grid.acc1[:i])]
    curve = tracker.client.get_metric_history(evaluate, "acc1_vs_macs")
    assert sorted((m.step, m.value) for m in curve) == front and len(front) == grid.pareto.sum()
    assert all("acc1_vs_macs" not in c.data.metrics for c in tracker.children(evaluate))
    metrics = json.loads((reproduced / "results" / "metrics.json").read_text())
    assert (metrics["alpha"], metrics["temperature"], metrics["split"]) == (best["alpha"], best["temperature"], split)
    table = pd.read_csv(reproduced / "results" / "tradeoff.csv")
    assert list(table.columns) == ["skip", "macs", "params", "acc1", "acc5", "pareto", "macs_fraction"]
    assert table.macs_fraction.max() == 1.0 and len(table) == 16
    version = tracker.client.get_model_version("adaskip", "1")
    assert version.tags["train.alpha"] == str(best["alpha"]) and version.tags["adaskip.experiment"] == group


def test_second_repro_is_a_noop(reproduced: Path):
    before = (reproduced / "results" / "eval_grid.csv").stat().st_mtime_ns
    t = time.time()
    r = sh(reproduced, "dvc", "repro")
    assert time.time() - t < 60
    assert "Running stage" not in r.stdout, r.stdout
    assert (reproduced / "results" / "eval_grid.csv").stat().st_mtime_ns == before
    sh(reproduced, "dvc", "plots", "show", "-o", "plots")
    assert (reproduced / "plots" / "index.html").exists()
    sh(reproduced, "git", "clean", "-qfdx", "plots")  # leave the project as the fixture made it


def test_ray_head_requires_the_token(reproduced: Path, ray_address: str):
    """The Ray servers listen on every interface; with adaskip's defaults a client without the token is refused
    (the stages above joined with it)."""
    code = f"import ray; ray.init(address={ray_address!r})"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert r.returncode != 0 and "InvalidAuthToken" in r.stderr + r.stdout, (r.stdout + r.stderr)[-2000:]


def test_study_pipeline(reproduced: Path, ray_address: str, tmp_path: Path):
    """The study's DVC matrix on tiny settings: one stage per variant, its seeds as Ray cells, one MLflow parent
    with a child per cell, the comparison; then a DVC experiment changing one variant re-runs that variant's stage
    only, continues the same parent, and `dvc metrics diff` / `dvc plots diff` compare it with the commit."""
    reproduced = _copy(reproduced, tmp_path / "proj")
    study_dir = reproduced / "studies" / "ablation"
    study_dir.mkdir(parents=True)
    shutil.copy2(ROOT / "studies" / "ablation" / "dvc.yaml", study_dir / "dvc.yaml")
    # three 1-CPU cells on 2 CPUs: two at once, the third queued (no deadlock); the KD baseline distils from the
    # individual_full cell's model (its teacher: the same run), so it waits for that cell and trains no teacher
    spec = {
        "name": "ablation",
        "seeds": [0],
        "epochs": 1,
        "overrides": {"train": {"workers": 1, "cpus_per_worker": 1}},
        "variants": {
            "adn": {},
            "individual_full": {"baseline": "super"},
            "kd_individual_base": {"baseline": "base", "teacher": "super"},
        },
    }
    (study_dir / "study.yaml").write_text(yaml.safe_dump(spec))
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t")
    sh(reproduced, *git, "add", "-A")
    sh(reproduced, *git, "commit", "-qm", "study")
    r = sh(reproduced, "dvc", "repro", "studies/ablation/dvc.yaml", RAY_ADDRESS=ray_address)
    ran = [line.split("'")[1].split(":")[-1] for line in r.stdout.splitlines() if line.startswith("Running stage")]
    assert sorted(ran) == ["cells@adn", "cells@individual_full", "cells@kd_individual_base", "compare"], r.stdout
    assert ran[-1] == "compare" and "(3 of 3 cells, " in r.stderr, r.stderr[-3000:]  # adn's and those run ahead
    assert (
        "plan: 3 cells, each 1 worker x 1 CPU; the cluster (1 node(s), 2 CPUs, 0 GPUs) runs 2 at once, 2 waves"
        in r.stderr
    )
    assert "kd_individual_base-seed0: epoch 1/1" in r.stderr and "Traceback" not in r.stderr
    assert "teacher: epoch" not in r.stderr  # trained once, by individual_full's cell
    assert not list((reproduced / ".ray_results" / "study-ablation").glob("*.pt"))  # no model kept once all are done
    res = study_dir / "results"
    adn, ind, kd = (pd.read_csv(res / "cells" / f"{v}.csv") for v in ("adn", "individual_full", "kd_individual_base"))
    assert len(adn) == 16 and set(ind.skip) == {"FFFF"} and set(kd.skip) == {"TTTT"} and sorted(ind.seed) == [0]
    cmp = pd.read_csv(res / "comparison.csv")
    assert sorted(zip(cmp.skip, cmp.baseline)) == [("FFFF", "individual_full"), ("TTTT", "kd_individual_base")]
    assert "| FFFF |" in (res / "comparison.md").read_text() and set(cmp.seeds) == {1}
    summary = json.loads((res / "summary.json").read_text())
    assert set(summary) == {"adn", "individual_full", "kd_individual_base"}

    tracker = Tracker(f"sqlite:///{reproduced / 'mlflow.db'}", "adaskip")
    parents = [r for r in tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` = 'study'")]
    assert len(parents) == 1 and parents[0].info.status == FINISHED  # both variants' stages continued it
    parent = parents[0].info.run_id
    curves = tracker.client.search_runs([tracker.experiment_id], "tags.`adaskip.stage` = 'compare'")
    assert sorted(r.data.tags["adaskip.variant"] for r in curves) == ["adn", "individual_full", "kd_individual_base"]
    adn_curve = [r for r in curves if r.data.tags["adaskip.variant"] == "adn"][0].info.run_id
    assert len(tracker.client.get_metric_history(adn_curve, "acc1_vs_macs")) >= 2  # the mean Pareto front
    children = tracker.children(parent)
    assert sorted((c.data.tags["variant"], c.data.tags["seed"]) for c in children) == [
        ("adn", "0"),
        ("individual_full", "0"),
        ("kd_individual_base", "0"),
    ]
    ind_run, kd_run = (
        [c for c in children if c.data.tags["variant"] == v][0] for v in ("individual_full", "kd_individual_base")
    )
    assert kd_run.data.tags["adaskip.teacher_hash"] == ind_run.data.tags["adaskip.cell_hash"]  # where its epochs are
    assert "train_kd" in kd_run.data.metrics and "teacher_train_loss" not in kd_run.data.metrics
    assert all(c.info.status == FINISHED for c in children)
    sh(reproduced, *git, "add", "-A")
    sh(reproduced, *git, "commit", "-qm", "study results")

    r = sh(
        reproduced,
        "dvc",
        "exp",
        "run",
        "-n",
        "alpha09",
        "studies/ablation/dvc.yaml",
        "-S",
        "studies/ablation/study.yaml:++variants.adn.overrides.train.alpha=0.9",
        RAY_ADDRESS=ray_address,
    )
    assert "Running stage 'studies/ablation/dvc.yaml:cells@adn'" in r.stdout
    assert "Running stage 'studies/ablation/dvc.yaml:cells@individual_full'" not in r.stdout, r.stdout
    assert len(tracker.children(parent)) == 4  # the changed variant's new cell, in the same study run
    diff = sh(reproduced, "dvc", "metrics", "diff", "HEAD", "alpha09", "--json").stdout
    changed = json.loads(diff)["studies/ablation/results/summary.json"]
    assert any(k.startswith("adn.") for k in changed), changed
    assert not any(k.startswith(("individual_full.", "kd_")) for k in changed), changed  # not re-run: unchanged
    sh(reproduced, "dvc", "plots", "diff", "HEAD", "alpha09", "-o", "study_plots")
    assert (reproduced / "study_plots" / "index.html").exists()


# every family's model and export are in test_config and test_export (in CI); the pipeline runs, about 3 min each:
# make test-extended
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("mobilenetv2_100", marks=pytest.mark.extended),
        pytest.param("deit_tiny_patch16_224", marks=pytest.mark.extended),
        pytest.param("swin_tiny_patch4_window7_224", marks=pytest.mark.extended),
    ],
)
def test_any_family_by_changing_model_name(reproduced: Path, ray_address: str, name: str, tmp_path: Path):
    """Another family (the ResNet is the run above) by changing model.name only: the sweep's splits follow its stage
    depths, ViT/Swin get img_size from data.image_size, and every stage runs on it. One sweep trial and one epoch:
    the ResNet run checks convergence; every family's validation is in test_config, its export in test_export."""
    from adaskip.config import load_params
    from adaskip.training import load_model

    proj = _copy(reproduced, tmp_path / "proj")
    r = sh(
        proj,
        "dvc",
        "exp",
        "run",
        "-S",
        f"model.name={name}",
        "-S",
        "tune.num_samples=1",
        "-S",
        "train.epochs=1",
        RAY_ADDRESS=ray_address,
    )
    ran = {line.split("'")[1] for line in r.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"tune", "train", "evaluate", "report"}, r.stdout
    params = load_params(proj / "params.yaml")
    assert params.model.name == name
    net, _ = load_model(proj / "models" / "model.pt")
    assert net.backbone.default_cfg["architecture"] == name.split(".")[0]
    trained = json.loads((proj / "results" / "train_metrics.json").read_text())["trained_with"]
    assert trained["split"] == net.split and net.split in tune_splits(params)
    grid = pd.read_csv(proj / "results" / "eval_grid.csv")
    assert len(grid) == 2**net.num_stages and grid.acc1.notna().all()
