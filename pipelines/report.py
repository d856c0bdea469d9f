"""DVC stage `report`: trade-off plot, markdown summary and results/metrics.json, logged to MLflow."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from adaskip.evaluation.report import report_markdown, summary_metrics, tradeoff_plot
from adaskip.files import write_json
from adaskip.stage import StageResult, main, remove_outputs, tracker

GRID, TRAINED, BEST = "results/eval_grid.csv", "results/train_metrics.json", "results/best_config.json"
PLOT, REPORT, METRICS = "results/tradeoff.png", "results/report.md", "results/metrics.json"


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
    remove_outputs(PLOT, REPORT, METRICS)
    grid = pd.read_csv(GRID)
    trained = json.loads(Path(TRAINED).read_text())
    best = json.loads(Path(BEST).read_text()) if Path(BEST).exists() else None
    metrics = summary_metrics(grid, trained, best)
    tracking = tracker(params)
    with tracking.run("report", {"adaskip.stage": "report"}) as run_id:
        tradeoff_plot(grid, PLOT, f"{params.model.name} on {params.data.name}")
        Path(REPORT).write_text(report_markdown(grid, metrics, best, trained.get("trained_with")))
        tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None})
        for path in (PLOT, REPORT):
            tracking.log_artifact(run_id, path)
        write_json(metrics, METRICS)
    return Reported(metrics)


if __name__ == "__main__":
    main(__doc__, run)
