"""What a person sees of adaskip's runs in MLflow: run names and params that say what was trained, the tag that groups
one pipeline run's stages, the trade-off curve as step-indexed metrics (so MLflow's line chart overlays runs), and
UI addresses that open MLflow's training view (not its GenAI pages)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional
from urllib.parse import quote

import pandas as pd

GROUP_TAG = "adaskip.experiment"  # the DVC experiment a run belongs to (see experiment_label): group by it in the UI
# on evaluate/compare runs only: test top-1 of the Pareto front at step = MACs per image (named to be the first chart)
CURVE = "acc1_vs_macs"
TRAINING_VIEW = {"workflowType": "machine_learning"}  # MLflow 3.17's UI reads its view from the URL, not the tag
UI_ENV, UI_DEFAULT = "ADASKIP_UI_URL", "http://127.0.0.1:5000"  # where `make ui` serves a local store


def describe(trained_with: Mapping[str, Any]) -> str:
    """``α0.62 T1.81 split 2-2-3-2 resnet34``: what a model file or run trained (its ``trained_with``), what differs
    between experiments first."""
    w, parts = trained_with, []
    if w.get("alpha") is not None:
        parts.append(f"α{w['alpha']:.2f}")
    if w.get("temperature") is not None:
        parts.append(f"T{w['temperature']:.2f}")
    if w.get("split"):
        parts.append("split " + "-".join(map(str, w["split"])))
    return " ".join(parts + ([str(w["model"])] if w.get("model") else []))


def run_name(stage: str, experiment: str, trained_with: Optional[Mapping[str, Any]] = None) -> str:
    """``evaluate α0.62 T1.81 split 2-2-3-2 resnet34 (workspace-1a2b3c)``: the stage, what it trained, the DVC
    experiment; the name the runs table and a chart's legend show."""
    return f"{stage} {describe(trained_with)} ({experiment})" if trained_with else f"{stage} ({experiment})"


def trained_params(trained_with: Mapping[str, Any]) -> dict[str, Any]:
    """``trained_with`` as the params the train run logs (the same keys: the compare view lines them up)."""
    keys = {
        "model": "model.name",
        "data": "data.name",
        "alpha": "train.alpha",
        "temperature": "train.temperature",
        "split": "model.split",
        "epochs": "train.epochs",
        "seed": "train.seed",
    }
    return {key: trained_with[k] for k, key in keys.items() if trained_with.get(k) is not None}


def experiment_label(params_digest: str) -> str:
    """The DVC experiment a stage runs in: ``DVC_EXP_NAME`` under ``dvc exp run``; a plain ``dvc repro`` names none,
    so ``workspace-<digest of its params>`` (DVC calls it the workspace): one plain run's stages share it, and a
    plain run with other params gets another."""
    return os.environ.get("DVC_EXP_NAME") or f"workspace-{params_digest[:6]}"


def curve_steps(table: pd.DataFrame, acc: str = "acc1") -> list[tuple[int, float]]:
    """The trade-off curve as (step, value) pairs: the Pareto front's top-1 (each point more accurate than every
    cheaper one) at step = its MACs per image (an integer, as MLflow's steps are), cheapest first. Logged under
    :data:`CURVE`, MLflow's line chart with the step as x-axis draws it, one line per run in the run's colour."""
    rows = table.sort_values(["macs", acc], ascending=[True, False]).drop_duplicates("macs")
    front = rows[rows[acc] > rows[acc].cummax().shift(fill_value=float("-inf"))]
    return [(int(m), float(a)) for m, a in zip(front["macs"], front[acc])]


def ui_base(tracking_uri: str) -> str:
    """The address of the MLflow UI over this store: the tracking server itself, or `make ui`'s for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return os.environ.get(UI_ENV, UI_DEFAULT).rstrip("/")


def _query(extra: Mapping[str, str]) -> str:
    return "&".join(f"{k}={quote(str(v), safe='')}" for k, v in {**TRAINING_VIEW, **extra}.items())


def runs_url(base: str, experiment_id: str, **extra: str) -> str:
    """The experiment's runs in the training view (``searchFilter=...``, ``compareRunsMode=CHART``: MLflow's own
    URL parameters)."""
    return f"{base}/#/experiments/{experiment_id}/runs?{_query(extra)}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{_query({})}"


def chart_url(base: str, experiment_id: str, stage: str) -> str:
    """The chart view over the runs of one stage (its curves overlaid): MLflow's charts plot the runs the table
    shows, so the filter is what puts every evaluate run, and only those, on them."""
    return runs_url(base, experiment_id, searchFilter=f"tags.`adaskip.stage` = '{stage}'", compareRunsMode="CHART")
