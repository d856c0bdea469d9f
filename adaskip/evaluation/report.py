"""The accuracy-vs-MACs trade-off plot (one run's grid, or a study's per-variant curves) and the markdown
summary of one pipeline run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from .pareto import tradeoff_auc


def tradeoff_plot(
    table: pd.DataFrame, path: str | Path, title: str = "accuracy vs MACs", group: Optional[str] = None
) -> None:
    """Test top-1 accuracy against MACs, saved as a PNG at ``path`` (which may be a temporary name without .png).

    Without ``group``: one point per sub-network of an evaluation grid (columns ``skip, macs, acc1, pareto``),
    the Pareto front joined and the skip strings labelled (the pipeline's report). With ``group``: one curve per
    value of that column (the study's ``variant``) over aggregated rows (columns ``macs, acc1_mean, acc1_std``),
    mean +- std over seeds as error bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5) if group is None else (7.5, 4.8))
    if group is None:
        mmacs = table.macs / 1e6
        ax.scatter(mmacs, table.acc1, c=["tab:red" if p else "tab:gray" for p in table.pareto], zorder=3)
        front = table[table.pareto].sort_values("macs")
        ax.plot(front.macs / 1e6, front.acc1, color="tab:red", label="Pareto front")
        for x, y, s in zip(mmacs, table.acc1, table.skip):
            ax.annotate(s, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    else:
        for name, a in table.groupby(group, sort=False):
            a = a.sort_values("macs")
            # markers only: several configurations share a MACs value, so a line through them would zigzag
            ax.errorbar(
                a.macs / 1e6,
                a.acc1_mean,
                yerr=a.acc1_std,
                label=name,
                capsize=3,
                linestyle="none",
                marker="s" if len(a) == 1 else "o",
                markersize=8 if len(a) == 1 else 4,
                alpha=0.85,
            )
    ax.set(xlabel="MMACs per image", ylabel="test top-1 accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=None if group is None else 8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def summary_metrics(grid: pd.DataFrame, trained: dict[str, Any], best: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The contract's results/metrics.json: trained super/base accuracy and the best trial's objective."""
    by_macs = grid.sort_values("macs")
    base, sup = by_macs.iloc[0], by_macs.iloc[-1]
    return {
        "super_acc1": float(sup.acc1),
        "base_acc1": float(base.acc1),
        "super_acc5": float(sup.acc5),
        "base_acc5": float(base.acc5),
        "val_acc_super": trained.get("val_acc_super"),
        "val_acc_base": trained.get("val_acc_base"),
        "test_tradeoff_auc": tradeoff_auc(grid.macs, grid.acc1),
        "base_macs_ratio": float(base.macs / sup.macs),
        "tune_best_objective": None if best is None else best.get("objective"),
    }


def report_markdown(
    grid: pd.DataFrame, metrics: dict[str, Any], best: Optional[dict[str, Any]], trained_with: Optional[dict[str, Any]]
) -> str:
    """results/report.md of one pipeline run: super-/base-net accuracy, what train trained (``trained_with``: alpha,
    temperature, split, from results/train_metrics.json) and whether tune chose it, the evaluation grid."""
    lines = [
        "# adaskip report",
        "",
        f"Super-net test top-1 **{metrics['super_acc1']:.1f}%**, base-net **{metrics['base_acc1']:.1f}%** "
        f"at {100 * metrics['base_macs_ratio']:.0f}% of the super-net's MACs; "
        f"{int(grid.pareto.sum())} of {len(grid)} sub-networks on the Pareto front.",
        "",
    ]
    w = trained_with or best or {}  # train_metrics.json names what was trained; an older one did not
    chosen = f"alpha={w.get('alpha', 0):.3f}, T={w.get('temperature', 0):.2f}, split={w.get('split')}"
    if best is not None and best.get("objective") is not None:
        lines += [
            f"Tune chose {chosen}: the best validation objective of its trials ({best['objective']:.2f} after "
            f"{best.get('epochs', '?')} epochs; {best.get('failed_trials', 0)} trial(s) failed); train trained "
            "it for the full epochs. The test split is used by evaluate only.",
            "",
        ]
    elif trained_with:
        lines += [f"Tune disabled (tune.enabled: false): trained params.yaml's {chosen}.", ""]
    cols = [c for c in ("skip", "macs", "params", "acc1", "acc5", "latency_ms", "pareto") if c in grid]
    lines += [grid[cols].to_markdown(index=False, floatfmt=".2f"), ""]
    return "\n".join(lines)
