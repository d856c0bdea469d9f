"""DVC stage `report`: trade-off plot and its data (results/tradeoff.csv), markdown summary and results/metrics.json
(with what was trained), logged to MLflow."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from adaskip.evaluation.report import report_markdown, summary_metrics, tradeoff_plot, tradeoff_table
from adaskip.files import write_csv, write_json
from adaskip.stage import StageResult, main, remove_outputs, tracker

GRID, TRAINED, BEST = "results/eval_grid.csv", "results/train_metrics.json", "results/best_config.json"
PLOT, REPORT, METRICS = "results/tradeoff.png", "results/report.md", "results/metrics.json"
TRADEOFF = "results/tradeoff.csv"  # the grid without its machine-dependent latency: committed, for `dvc plots diff`


@dataclass(frozen=True)
class Reported(StageResult):
    metrics: dict[str, Any]  # results/metrics.json

    def summary(self) -> str:
        m = self.metrics
        return (
            f"test super {m['super_acc1']:.1f} % base {m['base_acc1']:.1f} % ({m['base_macs_ratio']:.0%} of the "
            f"MACs) -> {REPORT}, {PLOT}, {METRICS}"
        )


def run(params, args) -> Reported:
    from adaskip.tracking.views import describe, run_name, trained_params

    remove_outputs(PLOT, REPORT, METRICS, TRADEOFF)
    grid = pd.read_csv(GRID)
    trained = json.loads(Path(TRAINED).read_text())
    best = json.loads(Path(BEST).read_text()) if Path(BEST).exists() else None
    metrics = summary_metrics(grid, trained, best)
    trained_with = trained.get("trained_with") or {}
    tracking = tracker(params)
    with tracking.run(run_name("report", tracking.group, trained_with), {"adaskip.stage": "report"}) as run_id:
        what = describe(trained_with) or params.model.name  # alpha, T and split, when train_metrics.json says
        tradeoff_plot(grid, PLOT, f"{params.data.name}: {what} ({tracking.group})")
        Path(REPORT).write_text(report_markdown(grid, metrics, best, trained_with or None))
        tracking.log_params(run_id, trained_params(trained_with))
        tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        for path in (PLOT, REPORT):
            tracking.log_artifact(run_id, path)
        write_csv(tradeoff_table(grid), TRADEOFF)
        write_json(metrics, METRICS)
    return Reported(metrics)


if __name__ == "__main__":
    main(__doc__, run)
