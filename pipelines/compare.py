"""Study stage `compare`: mean +- std over seeds per variant and configuration, the adaptive-depth network
against individually trained baselines (paired by seed: mean difference, 95 % confidence interval, smallest
detectable difference, "inconclusive" unless the interval excludes zero), every variant's trade-off curve on one
plot."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from adaskip.ablation import stats
from adaskip.ablation.spec import cells_file, load_study, mlflow_tags, results_dir
from adaskip.config import ConfigError
from adaskip.evaluation.report import tradeoff_plot
from adaskip.files import atomic_path, write_csv, write_json
from adaskip.stage import StageResult, main, remove_outputs, tracker


def configure(parser) -> None:
    parser.add_argument("--study", default="studies/ablation/study.yaml", help="study file (default: %(default)s)")


@dataclass(frozen=True)
class Compared(StageResult):
    comparison: pd.DataFrame  # comparison.csv: the reference against each baseline, paired by seed
    summary_metrics: dict[str, Any]  # summary.json
    variants: int
    seeds: int
    reference: str
    markdown: Path

    def summary(self) -> str:
        return f"{self.variants} variants x {self.seeds} seeds against {self.reference!r} -> {self.markdown}"


def run(params, args) -> Compared:
    spec = load_study(args.study)
    res = results_dir(args.study)
    outs = {
        k: res / f
        for k, f in (
            ("agg", "curves.csv"),
            ("cmp", "comparison.csv"),
            ("md", "comparison.md"),
            ("png", "tradeoff.png"),
            ("json", "summary.json"),
        )
    }
    remove_outputs(*outs.values())
    rows = pd.concat([_variant_rows(args.study, v) for v in spec.variants], ignore_index=True)
    agg, cmp = stats.aggregate(rows), stats.compare(rows, spec.reference)
    write_csv(agg, outs["agg"])
    write_csv(cmp, outs["cmp"])
    with atomic_path(outs["md"]) as tmp:
        Path(tmp).write_text(stats.comparison_markdown(cmp, agg, spec))
    with atomic_path(outs["png"]) as tmp:
        tradeoff_plot(agg, tmp, f"study {spec.name}: {params.model.name} on {params.data.name}", group="variant")
    tracking = tracker(params)
    parent = tracking.find_run(mlflow_tags(spec, params))
    if parent:  # the study's parent run: its children are the cells, compared side by side in the MLflow UI
        tracking.log_table(parent, agg, "curves.json")
        tracking.log_table(parent, cmp, "comparison.json")
        for key in ("md", "png"):
            tracking.log_artifact(parent, outs[key])
        _log_variant_curves(tracking, parent, spec.name, agg)
    summary = stats.summary(agg, rows)
    write_json(summary, outs["json"])
    print(outs["md"].read_text())  # the study's result: the table a person came for
    return Compared(cmp, summary, len(spec.variants), len(spec.seeds), spec.reference, outs["md"])


def _log_variant_curves(tracking, parent: str, study: str, agg: pd.DataFrame) -> None:
    """One run per variant, holding its mean curve (:data:`CURVE`, step = MACs): the chart view of the compare runs
    overlays the variants, each in its own colour. Top-level runs (tagged with the study's run), so the chart view's
    filter finds them; the study's run keeps the cells as its children."""
    import logging

    from adaskip.tracking.views import CURVE, chart_url, curve_steps, ui_base

    for variant, rows in agg.groupby("variant", sort=False):
        tags = {"adaskip.stage": "compare", "adaskip.study_run": parent, "adaskip.variant": str(variant)}
        run_id = tracking.unfinished_run(tags)  # a re-run's curve is a new run: old points stay theirs
        with tracking.run(f"compare {study}: {variant}", {**tags, "adaskip.study": study}, run_id=run_id) as run:
            tracking.log_curve(run, CURVE, curve_steps(rows, "acc1_mean"))
    charts = chart_url(ui_base(tracking.uri), tracking.experiment_id, "compare")
    logging.getLogger("adaskip.compare").info("each variant's mean curve: %s", charts)


def _variant_rows(study_file: str, variant: str) -> pd.DataFrame:
    path = cells_file(study_file, variant)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no results for variant {variant!r}; run the study first "
            f"(dvc repro {Path(study_file).parent / 'dvc.yaml'})"
        )
    return pd.read_csv(path)


if __name__ == "__main__":
    main(__doc__, run, configure)
