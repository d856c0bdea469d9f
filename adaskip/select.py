"""Choose a sub-network under a budget (``adaskip select``).

The grid is the evaluate stage's: ``results/eval_grid.csv``, or the ``eval_grid.json`` table of an MLflow evaluate
run. Every sub-network within every budget given (latency, MACs, top-1) is a candidate, on the MACs Pareto front or
not (on a CPU, latency and MACs disagree). The rule answers the question asked:

- a cost cap (``max_latency_ms``, ``max_macs``), with or without an accuracy floor: the most accurate candidate,
  ties going to the faster (lower p50 where the grid has latency, else fewer MACs);
- an accuracy floor alone (``min_acc``): the cheapest candidate, the lowest p50 where the grid has latency for the
  device and batch (one device, or the one ``device`` names), else the fewest MACs; ties going to the more accurate;
- ``prefer`` (``accuracy``, ``latency``, ``macs``) overrides the rule: the candidate best at that.

Remaining ties go to fewer MACs, then the skip string. Latency is milliseconds per forward of one batch (p50), at the
first measured batch size unless ``batch`` names another, on the grid's device (``device`` picks one when the grid
holds several machines' rows). Exit codes of the command: 0 chosen, 1 nothing fits, 2 bad arguments (an
:class:`AdaskipError`, one line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from .console import si
from .errors import AdaskipError
from .evaluation.latency import latency_column, latency_wide, wide_columns

GRID = "results/eval_grid.csv"
TABLE = "eval_grid.json"  # the evaluate run's artifact


class SelectError(AdaskipError, ValueError):
    """The selection cannot be made as asked: no budget, a negative one, an unknown device or batch size, no grid."""


@dataclass(frozen=True)
class Budget:
    max_latency_ms: Optional[float] = None
    max_macs: Optional[float] = None
    min_acc: Optional[float] = None
    batch: Optional[int] = None  # which measured batch size max_latency_ms refers to (default: the first)
    device: Optional[str] = None  # which machine's latency (default: the grid's only one)
    prefer: Optional[str] = None  # accuracy, latency or macs: overrides the rule (see the module's docstring)

    cli: bool = True  # messages name the command's flags (--max-latency-ms), else the request's params (serving)

    def name(self, key: str) -> str:
        return f"--{key.replace('_', '-')}" if self.cli else key

    def check(self) -> "Budget":
        """Raise a SelectError unless some limit is given and each is a number >= 0 (batch: an integer >= 1)."""
        limits = {self.name(k): getattr(self, k) for k in ("max_latency_ms", "max_macs", "min_acc")}
        if all(v is None for v in limits.values()):
            raise SelectError(f"no budget given: pass {', '.join(limits)}")
        for key, v in {**limits, self.name("batch"): self.batch}.items():
            is_batch = key == self.name("batch")
            if v is not None and (
                not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < int(is_batch)
                or (is_batch and v != int(v))
            ):
                raise SelectError(f"{key} must be {'an integer >= 1' if is_batch else 'a number >= 0'}, got {v!r}")
        if self.prefer is not None and self.prefer not in PREFER:
            raise SelectError(f"{self.name('prefer')} must be one of {', '.join(PREFER)}, got {self.prefer!r}")
        return self

    def objective(self, has_latency: bool) -> str:
        """What the choice maximises or minimises: ``prefer``, else accuracy under a cost cap, else the cost."""
        if self.prefer:
            return self.prefer
        if self.max_latency_ms is not None or self.max_macs is not None:
            return "accuracy"
        return "latency" if has_latency else "macs"

    def describe(self, batch: Optional[int]) -> str:
        at = f" at batch {batch}" if batch else ""
        parts = [
            f"latency <= {self.max_latency_ms:g} ms{at}" if self.max_latency_ms is not None else "",
            f"MACs <= {si(self.max_macs)}" if self.max_macs is not None else "",
            f"top-1 >= {self.min_acc:g} %" if self.min_acc is not None else "",
        ]
        return ", ".join(p for p in parts if p)


PREFER = ("accuracy", "latency", "macs")


@dataclass(frozen=True)
class Choice:
    chosen: Optional[pd.Series]  # None: nothing fits
    rows: pd.DataFrame  # the sub-networks considered (every one of the device)
    fitting: int  # how many of them fit
    p50: str  # the latency column used ("": none)
    batch: Optional[int]
    objective: str  # accuracy, latency or macs: what chose among those that fit


def read_grid(path: str | Path = GRID, instead: str = "pass --grid CSV or --run RUN_ID") -> pd.DataFrame:
    """An evaluation grid CSV; a missing file (the message offers ``instead``) or one without skip/macs/acc1 is one
    SelectError line."""
    path = Path(path)
    if not path.is_file():
        raise SelectError(f"no evaluation grid at {path}: run the evaluate stage (dvc repro), {instead}")
    return checked(pd.read_csv(path, dtype={"skip": str}), str(path))


def with_latency(grid: pd.DataFrame, tables: list[str | Path]) -> pd.DataFrame:
    """``grid``'s accuracy and MACs with the latency of long-form tables (``adaskip profile``'s, results/latency.csv)
    instead of its own: one row per sub-network and device (``--device`` picks one)."""
    from .evaluation.latency import LONG_COLUMNS

    parts = []
    for path in tables:
        if not Path(path).is_file():
            raise SelectError(f"no latency table at {path}: write one with adaskip profile")
        part = pd.read_csv(path, dtype={"skip": str})
        if missing := [c for c in LONG_COLUMNS if c not in part.columns]:
            raise SelectError(f"{path} is not a latency table (no column {', '.join(missing)})")
        parts.append(part)
    long = pd.concat(parts, ignore_index=True).drop_duplicates(["skip", "device", "batch_size", "threads"], keep="last")
    own = [
        c
        for c in grid.columns
        if c in ("device", "threads", "latency_ms") or wide_columns([c]) or c.startswith("latency_p90_ms_")
    ]
    wide = pd.concat([latency_wide(rows) for _, rows in long.groupby("device", sort=False)], ignore_index=True)
    return grid.drop(columns=own).merge(wide, on="skip")


def checked(grid: pd.DataFrame, source: str) -> pd.DataFrame:
    """``grid`` when it has the columns a choice needs; else a SelectError naming ``source``."""
    missing = [c for c in ("skip", "macs", "acc1") if c not in grid.columns]
    if missing or grid.empty:
        why = f"no column {', '.join(missing)}" if missing else "no rows"
        raise SelectError(f"{source} is not an evaluation grid ({why})")
    return grid


def on_device(grid: pd.DataFrame, device: Optional[str], need: bool) -> pd.DataFrame:
    """The rows of one device: ``device`` matched exactly or as a unique case-insensitive part (``cpu``, ``H100``);
    without it the grid must hold one device when ``need`` (a latency budget)."""
    present = list(dict.fromkeys(grid["device"])) if "device" in grid.columns else []
    if device is None:
        if need and len(present) > 1:
            raise SelectError(f"the grid holds {len(present)} devices: pass --device (one of {_listing(present)})")
        return grid.drop_duplicates("skip")
    matches = [d for d in present if d == device] or [d for d in present if device.lower() in str(d).lower()]
    if len(matches) != 1:
        what = "matches several" if matches else "is not one"
        raise SelectError(f"--device {device!r} {what} of the grid's devices: {_listing(present) or 'none recorded'}")
    return grid[grid["device"] == matches[0]]


def latency_of(grid: pd.DataFrame, batch: Optional[int], flag: str = "--batch") -> tuple[str, Optional[int]]:
    """The p50 latency column for ``batch`` (default: the first measured, as ``latency_ms``) and its batch size."""
    pairs = wide_columns(list(grid.columns))
    if batch is None:
        if pairs:
            return latency_column(*pairs[0]), pairs[0][0]
        if "latency_ms" in grid.columns:
            return "latency_ms", None
        raise SelectError("the grid has no latency columns: a --max-latency-ms budget cannot be checked")
    found = [(b, t) for b, t in pairs if b == batch]
    if not found:
        sizes = sorted({b for b, _ in pairs})
        raise SelectError(
            f"{flag} {batch}: no latency measured at that batch size; the latency table has batch "
            f"sizes {_listing(sizes) or 'none'} (evaluate.latency_batch_sizes, adaskip profile --batch)"
        )
    return latency_column(*found[0]), batch


def choose(grid: pd.DataFrame, budget: Budget) -> Choice:
    """The best sub-network of ``grid`` within ``budget`` by the rule of this module's docstring."""
    budget.check()
    need = budget.max_latency_ms is not None or budget.prefer == "latency"
    rows = on_device(grid, budget.device, need=need)
    # latency counts where it is the device's: with several devices and none named, a floor alone goes by MACs
    several = budget.device is None and "device" in grid.columns and grid["device"].nunique() > 1
    has = not several and ("latency_ms" in rows.columns or bool(wide_columns(list(rows.columns))))
    p50, batch = latency_of(rows, budget.batch, budget.name("batch")) if need or has or budget.batch else ("", None)
    ok = pd.Series(True, rows.index)
    if budget.max_latency_ms is not None:
        ok &= rows[p50] <= budget.max_latency_ms
    if budget.max_macs is not None:
        ok &= rows["macs"] <= budget.max_macs
    if budget.min_acc is not None:
        ok &= rows["acc1"] >= budget.min_acc
    objective = budget.objective(bool(p50))
    faster = [p50] if p50 else []
    keys = {
        "accuracy": [("acc1", False), *((c, True) for c in faster)],
        "latency": [*((c, True) for c in faster), ("acc1", False)],
        "macs": [("macs", True), ("acc1", False)],
    }[objective] + [("macs", True), ("skip", True)]
    fit = rows[ok].sort_values([k for k, _ in keys], ascending=[a for _, a in keys], kind="stable")
    return Choice(fit.iloc[0] if len(fit) else None, rows, len(fit), p50, batch, objective)


def figures(row: pd.Series, p50: str) -> str:
    """``top-1 76.50 %, top-5 93.10 %, 3.460 GMACs, 21.300 Mparams, p50 1.23 ms / p90 1.4 ms per batch of 1 on ...``"""
    parts = [f"top-1 {row['acc1']:.2f} %"] + ([f"top-5 {row['acc5']:.2f} %"] if "acc5" in row else [])
    parts += [f"{si(row['macs'])}MACs"] + ([f"{si(row['params'])}params"] if "params" in row else [])
    return ", ".join(parts + ([_latency(row, p50)] if p50 in row else []))


def _latency(row: pd.Series, p50: str) -> str:
    ((batch, suffix),) = wide_columns([p50]) or [(None, None)]
    threads = suffix or (int(row["threads"]) if "threads" in row else None)
    p90 = latency_column(batch, suffix, "p90") if batch else ""
    text = f"p50 {row[p50]:.3g} ms" + (f" / p90 {row[p90]:.3g} ms" if p90 in row else "")
    text += (f" per batch of {batch}" if batch else " per batch") + (f" on {row['device']}" if "device" in row else "")
    return text + (f", {threads} thread{'s' if threads > 1 else ''}" if threads else "")


def verdict(choice: Choice, budget: Budget) -> str:
    """One line: the chosen configuration with its figures, or that none fits and what the cheapest costs."""
    limits = budget.describe(choice.batch)
    if choice.chosen is not None:
        best = {"accuracy": "most accurate", "latency": "fastest", "macs": "cheapest in MACs"}[choice.objective]
        why = f"prefer {budget.prefer}" if budget.prefer else "the rule for this budget"
        return (
            f"{choice.chosen['skip']}: {figures(choice.chosen, choice.p50)} (the {best} of the {choice.fitting} of "
            f"{len(choice.rows)} sub-networks within {limits}: {why})"
        )
    key = choice.p50 if budget.max_latency_ms is not None else "macs"
    cheapest = choice.rows.sort_values([key, "macs"], kind="stable").iloc[0]
    best = choice.rows.sort_values("acc1", ascending=False, kind="stable").iloc[0]
    most = f"; the most accurate, {best['skip']}, reaches {best['acc1']:.2f} %" if budget.min_acc is not None else ""
    return f"no sub-network fits {limits}: the cheapest is {cheapest['skip']}: {figures(cheapest, choice.p50)}{most}"


def aliases(grid: pd.DataFrame, within: float = 1.0) -> dict[str, str]:
    """The registry aliases the evaluate stage sets: ``super``, ``base`` and ``fastest-within-1pct``, the sub-network
    with the lowest p50 latency (fewest MACs without latency columns) among those within ``within`` points of the
    super-net's top-1."""
    n = len(str(grid["skip"].iloc[0]))
    top = grid.loc[grid["skip"] == "F" * n, "acc1"].max()
    near = grid[grid["acc1"] >= top - within]
    key = [c for c in ("latency_ms", "macs") if c in grid.columns]
    fastest = near.sort_values(key + ["skip"], kind="stable").iloc[0]["skip"]
    return {"super": "F" * n, "base": "T" * n, f"fastest-within-{within:g}pct": str(fastest)}


def _listing(values: list) -> str:
    return ", ".join(map(str, values))
