"""Accuracy/efficiency trade-off: Pareto front, area under the trade-off curve, summary table."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def _as_pair(macs: Sequence[float], acc: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(macs, dtype=float).reshape(-1)
    a = np.asarray(acc, dtype=float).reshape(-1)
    if m.shape != a.shape:
        raise ValueError(f"macs and acc must have the same length, got {m.size} and {a.size}")
    if np.isnan(m).any() or np.isnan(a).any():
        raise ValueError("macs and acc must not contain NaN")
    return m, a


def pareto_front(macs: Sequence[float], acc: Sequence[float]) -> list[bool]:
    """For each configuration, whether it is on the Pareto front of (fewer MACs, higher accuracy).

    A configuration is dominated when another has ``macs <= `` and ``acc >= `` its own with at least
    one strict inequality. Identical points do not dominate each other: all copies stay on the front.
    """
    m, a = _as_pair(macs, acc)
    le_m = m[None, :] <= m[:, None]  # [i, j]: j costs no more than i
    ge_a = a[None, :] >= a[:, None]  # [i, j]: j is at least as accurate as i
    strict = (m[None, :] < m[:, None]) | (a[None, :] > a[:, None])
    dominated = (le_m & ge_a & strict).any(axis=1)
    return [not d for d in dominated]


def tradeoff_auc(macs: Sequence[float], acc: Sequence[float], macs_max: float | None = None) -> float:
    """Area under the accuracy-vs-normalised-MACs staircase, in the unit of ``acc``.

    With normalised cost ``c_i = macs_i / macs_max`` (``macs_max`` defaults to ``max(macs)``), the best
    accuracy affordable at budget ``c`` is ``best(c) = max{acc_i : c_i <= c}`` (0 below the cheapest
    configuration). The result is ``integral_0^1 best(c) dc``: the mean, over budgets uniform in
    [0, macs_max], of the best accuracy a sub-network within the budget reaches. It grows when any
    sub-network gets more accurate or cheaper (at the same accuracy), so it scores the whole
    trade-off curve rather than the super-net alone (whose accuracy counts only from its own cost
    on: with the default ``macs_max`` the most expensive configuration adds nothing unless it is the
    only one at its cost). Configurations costing more than ``macs_max`` are ignored. For a single
    configuration at ``macs_max`` the area is 0.

    Example: MACs (1, 2, 4), accuracy (50, 60, 70): ``0.25 * 50 + 0.5 * 60 = 42.5``.
    """
    m, a = _as_pair(macs, acc)
    if m.size == 0:
        raise ValueError("tradeoff_auc needs at least one configuration")
    if (m < 0).any():
        raise ValueError("macs must be non-negative")
    top = float(m.max()) if macs_max is None else float(macs_max)
    if top <= 0:
        raise ValueError(f"macs_max must be positive, got {top}")
    c = m / top
    keep = c <= 1.0
    c, a = c[keep], a[keep]
    if c.size == 0:
        return 0.0
    order = np.argsort(c, kind="stable")
    c, a = c[order], a[order]
    best = np.maximum.accumulate(a)  # best accuracy affordable at cost c[k]
    # On [c[k], c[k+1]) the staircase is best[k]; the last step runs to 1. Equal costs give
    # zero-width steps, and the later one already includes their maximum.
    widths = np.diff(np.append(c, 1.0))
    return float(np.sum(best * widths))


def summarise(grid_df: pd.DataFrame, complexity_df: pd.DataFrame) -> pd.DataFrame:
    """Join an :func:`evaluate_grid` table with a :func:`complexity_table` (and optionally
    ``latency_ms``, from either) on ``skip``; add ``pareto`` (MACs vs top-1) and sort by MACs,
    most expensive first (ties by skip string). Configurations missing from either side are dropped.
    """
    for name, df in (("grid_df", grid_df), ("complexity_df", complexity_df)):
        if "skip" not in df.columns:
            raise ValueError(f"{name} needs a 'skip' column, has {list(df.columns)}")
    missing = [c for c, df in (("acc1", grid_df), ("macs", complexity_df)) if c not in df.columns]
    if missing:
        raise ValueError(f"summarise needs columns {missing} (acc1 in grid_df, macs in complexity_df)")
    extra = [c for c in complexity_df.columns if c != "skip" and c in grid_df.columns]
    merged = grid_df.merge(complexity_df.drop(columns=extra), on="skip", how="inner", validate="one_to_one")
    merged = merged.sort_values(["macs", "skip"], ascending=[False, True], kind="stable").reset_index(drop=True)
    merged["pareto"] = pareto_front(merged["macs"], merged["acc1"]) if len(merged) else []
    merged["pareto"] = merged["pareto"].astype(bool)
    first = [
        c
        for c in ("skip", "macs", "params", "skipped_stages", "acc1", "acc5", "loss", "n", "latency_ms", "pareto")
        if c in merged.columns
    ]
    return merged[first + [c for c in merged.columns if c not in first]]
