"""Comparing trade-offs in MLflow as a researcher does, in MLflow's own UI driven by a real headless Chromium: a
`dvc repro`, then a DVC experiment that fixes alpha and the split, then `adaskip ui`. The experiment trains what it
set, keeps the registry's aliases on the first model, and the chart view overlays both runs' trade-off curves.
Screenshots go to $ADASKIP_SCREENSHOTS (default: the test's temporary folder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import browser
from helpers import TINY, free_port, merge, new_project, sh

pytestmark = [pytest.mark.extended, pytest.mark.ray, pytest.mark.subprocess, pytest.mark.slow]
EXPERIMENT = "alpha09-split1121"


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """The project after `dvc repro` (the sweep chooses alpha, T and split) and an experiment that sets two."""
    if why := browser.missing():
        pytest.fail(why)
    repo = new_project(tmp_path_factory.mktemp("ui"), merge(TINY, {"train": {"workers": 1, "epochs": 3}}))
    sh(repo, "dvc", "repro")
    sh(repo, "dvc", "exp", "run", "-n", EXPERIMENT, "-S", "train.alpha=0.9", "-S", "model.split=[1,1,2,1]")
    return repo


def test_an_experiment_trains_what_it_sets_and_leaves_the_aliases(compared: Path):
    metrics = json.loads((compared / "results" / "metrics.json").read_text())  # the experiment, applied
    assert (metrics["alpha"], metrics["split"]) == (0.9, "1-1-2-1")
    shown = json.loads(sh(compared, "dvc", "exp", "show", "--json").stdout)
    assert EXPERIMENT in json.dumps(shown)
    from adaskip.tracking import Tracker

    tracker = Tracker(f"sqlite:///{compared / 'mlflow.db'}", "adaskip")
    base = tracker.client.get_model_version_by_alias("adaskip", "base")
    assert base.tags["train.alpha"] != "0.9" and base.tags["adaskip.experiment"].startswith("workspace-")
    newest = max(tracker.client.search_model_versions("name = 'adaskip'"), key=lambda v: int(v.version))
    assert newest.tags["train.alpha"] == "0.9" and newest.tags["adaskip.experiment"] == EXPERIMENT
    assert newest.tags["adaskip.candidate.base"] == "TTTT" and not newest.aliases


def test_mlflow_ui_overlays_the_experiments_curves(compared: Path):
    shots = Path(os.environ.get("ADASKIP_SCREENSHOTS") or compared / "screenshots")
    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "adaskip"), "ui", "--port", str(free_port())],
        cwd=compared,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        landing, charts = _addresses(ui)
        threading.Thread(target=ui.stdout.read, daemon=True).start()  # the server's log: never a full pipe
        with browser.chromium() as driver:
            text = browser.open_page(driver, landing, "evaluate α0.90")  # 0 clicks: the printed address
            browser.close_assistant(driver)
            browser.screenshot(driver, shots / "landing.png")
            assert "Model registry" in text and "Runs" in text  # the training view (GenAI's has no registry)
            assert re.search(r"evaluate α0\.\d\d T\d\.\d\d split 2-2-3-2 resnet34 \(workspace-\w+\)", text), text

            browser.open_page(driver, charts, "acc1_vs_macs")  # the chart view over the evaluate runs
            browser.close_assistant(driver)
            chart = browser.chart(driver, "acc1_vs_macs")
            browser.screenshot(driver, shots / "curves.png")
            assert len(chart.legend) == 2 and len(chart.colours) == 2, chart
            assert any(EXPERIMENT in line for line in chart.legend), chart.legend
            assert any("(workspace-" in line for line in chart.legend), chart.legend
            assert all(n >= 2 for n in chart.points), chart  # each a curve, not a point

            base = landing.split("/#/")[0]
            text = browser.open_page(driver, f"{base}/#/models/adaskip?workflowType=machine_learning", "@ base")
            browser.close_assistant(driver)
            browser.screenshot(driver, shots / "registry.png")
            assert "@ super" in text and "@ fastest-within-1pct" in text, text[:2000]
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=60)
    print(f"screenshots: {shots}")


def _addresses(ui: subprocess.Popen, timeout: float = 180.0) -> tuple[str, str]:
    """The two addresses `adaskip ui` prints once the server answers: the training runs, the evaluate runs' chart."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(found) < 2:
        line = ui.stdout.readline()
        assert line or ui.poll() is None, "adaskip ui ended before printing its addresses"
        assert time.monotonic() < deadline, "adaskip ui printed no address"
        if line.startswith("MLflow UI, the training runs: "):
            found["runs"] = line.split(": ", 1)[1].strip()
        elif "trade-off curve" in line:
            found["chart"] = line.split(": ", 1)[1].strip()
    return found["runs"], found["chart"]
