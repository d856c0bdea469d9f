"""The trade-off plot and the markdown summary of one pipeline run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from .pareto import tradeoff_auc


def tradeoff_plot(grid: pd.DataFrame, path: str | Path, title: str = "accuracy vs MACs") -> None:
    """Top-1 accuracy against MACs of every sub-network, Pareto front joined, skip strings labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    mmacs = grid.macs / 1e6
    ax.scatter(mmacs, grid.acc1, c=["tab:red" if p else "tab:gray" for p in grid.pareto], zorder=3)
    front = grid[grid.pareto].sort_values("macs")
    ax.plot(front.macs / 1e6, front.acc1, color="tab:red", label="Pareto front")
    for x, y, s in zip(mmacs, grid.acc1, grid.skip):
        ax.annotate(s, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set(xlabel="MMACs per image", ylabel="test top-1 accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_metrics(grid: pd.DataFrame, trained: dict[str, Any], best: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The contract's results/metrics.json: trained super/base accuracy and the best trial's objective."""
    by_macs = grid.sort_values("macs")
    base, sup = by_macs.iloc[0], by_macs.iloc[-1]
    return {"super_acc1": float(sup.acc1), "base_acc1": float(base.acc1), "super_acc5": float(sup.acc5),
            "base_acc5": float(base.acc5), "val_acc_super": trained.get("val_acc_super"),
            "val_acc_base": trained.get("val_acc_base"), "test_tradeoff_auc": tradeoff_auc(grid.macs, grid.acc1),
            "base_macs_ratio": float(base.macs / sup.macs),
            "tune_best_objective": None if best is None else best.get("objective")}


def markdown(grid: pd.DataFrame, metrics: dict[str, Any], best: Optional[dict[str, Any]]) -> str:
    lines = ["# adaskip report", "",
             f"Super-net test top-1 **{metrics['super_acc1']:.1f}%**, base-net **{metrics['base_acc1']:.1f}%** "
             f"at {100 * metrics['base_macs_ratio']:.0f}% of the super-net's MACs; "
             f"{int(grid.pareto.sum())} of {len(grid)} sub-networks on the Pareto front.", ""]
    chosen = f"alpha={best['alpha']:.3f}, T={best['temperature']:.2f}, split={best['split']}" if best else ""
    if best is not None and best.get("objective") is not None:
        lines += [f"Tune chose {chosen}: the best validation objective of its trials ({best['objective']:.2f} after "
                  f"{best.get('epochs', '?')} epochs; {best.get('failed_trials', 0)} trial(s) failed); train trained "
                  "it for the full epochs. The test split is used by evaluate only.", ""]
    elif best is not None:
        lines += [f"Tune disabled (tune.enabled: false): trained params.yaml's {chosen}.", ""]
    cols = [c for c in ("skip", "macs", "params", "acc1", "acc5", "latency_ms", "pareto") if c in grid]
    lines += [grid[cols].to_markdown(index=False, floatfmt=".2f"), ""]
    return "\n".join(lines)
