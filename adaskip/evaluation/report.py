"""The accuracy-vs-MACs trade-off plot (one run's grid, or a study's per-variant curves) and the markdown
summary of one pipeline run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..config import SWEPT
from .pareto import tradeoff_auc


Y_RANGE = (0.0, 100.0)  # fixed: two runs' plots compare by eye


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
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5) if group is None else (7.5, 4.8))
    if group is None:  # x: the share of the super-net's MACs, y: a fixed range, so any two runs' plots line up
        share = table.macs / table.macs.max()
        ax.scatter(share, table.acc1, c=["tab:red" if p else "tab:gray" for p in table.pareto], zorder=3)
        front = table[table.pareto].sort_values("macs")
        ax.plot(front.macs / table.macs.max(), front.acc1, color="tab:red", label="Pareto front")
        for x, y, s in zip(share, table.acc1, table.skip):
            ax.annotate(s, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set(xlim=(0, 1.05), ylim=Y_RANGE, xlabel=f"share of the super-net's {table.macs.max() / 1e6:.3g} MMACs")
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
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
    if group is not None:
        ax.set(xlabel="MMACs per image")
    ax.set(ylabel="test top-1 accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=None if group is None else 8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def headline_metrics(grid: pd.DataFrame, top5: bool = False) -> dict[str, float]:
    """An evaluation grid's headlines: super-/base-net test top-1 (and top-5), the base-net's share of the super-net's
    MACs, the trade-off AUC."""
    by_macs = grid.sort_values("macs")
    base, sup = by_macs.iloc[0], by_macs.iloc[-1]
    return {
        "super_acc1": float(sup.acc1),
        "base_acc1": float(base.acc1),
        **({"super_acc5": float(sup.acc5), "base_acc5": float(base.acc5)} if top5 else {}),
        "test_tradeoff_auc": tradeoff_auc(grid.macs, grid.acc1),
        "base_macs_ratio": float(base.macs / sup.macs),
    }


def summary_metrics(grid: pd.DataFrame, trained: dict[str, Any], best: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The contract's results/metrics.json: the headlines, validation accuracy, the best trial's objective, and what
    was trained (alpha, temperature, split as ``2-2-3-2``: `dvc exp show` lists it for every experiment)."""
    w = trained.get("trained_with") or {}
    return {
        **headline_metrics(grid, top5=True),
        "val_acc_super": trained.get("val_acc_super"),
        "val_acc_base": trained.get("val_acc_base"),
        "tune_best_objective": None if best is None else best.get("objective"),
        "alpha": w.get("alpha"),
        "temperature": w.get("temperature"),
        "split": "-".join(map(str, w["split"])) if w.get("split") else None,
    }


def tradeoff_table(grid: pd.DataFrame) -> pd.DataFrame:
    """The grid's machine-independent columns (no latency), with MACs as a fraction of the super-net's: the plot data
    DVC compares between revisions (``dvc plots diff``)."""
    cols = [c for c in ("skip", "macs", "params", "acc1", "acc5", "pareto") if c in grid]
    return grid[cols].assign(macs_fraction=grid.macs / grid.macs.max()).sort_values(["macs", "skip"])


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
    chosen = f"alpha={_num(w.get('alpha'), '.3f')}, T={_num(w.get('temperature'), '.2f')}, split={w.get('split')}"
    if best is not None and best.get("objective") is not None:
        swept = best.get("swept")  # older best_config.json files did not say: the sweep searched all three
        lines += [
            f"Trained {chosen}; tune chose {', '.join(swept) if swept else 'them'}: the best validation objective of "
            f"its trials ({best['objective']:.2f} after {best.get('epochs', '?')} epochs; "
            f"{best.get('failed_trials', 0)} trial(s) failed), trained for the full epochs"
            + ("; the rest as params.yaml fixes them" if swept and len(swept) < len(SWEPT) else "")
            + ". The test split is used by evaluate only.",
            "",
        ]
    elif trained_with:
        lines += [f"No sweep: trained params.yaml's {chosen}.", ""]
    cols = [c for c in ("skip", "macs", "params", "acc1", "acc5", "latency_ms", "pareto") if c in grid]
    lines += [grid[cols].to_markdown(index=False, floatfmt=".2f"), ""]
    return "\n".join(lines)


def _num(value: Any, fmt: str) -> str:
    """``value`` formatted, or "?" when a results file does not say (older files)."""
    return "?" if value is None else format(value, fmt)
