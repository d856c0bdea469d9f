"""Serving by budget: which sub-network answers a request. A request names a sub-network (``skip``) or a budget
(``max_latency_ms`` with an optional ``batch``, ``max_macs``, ``min_acc``, and ``prefer``); a budget is answered by
the sub-network ``adaskip select`` picks by the same rule (:mod:`adaskip.select`) from the evaluation grid (accuracy,
MACs) and the latency table of the device the model serves on. No MLflow here: :mod:`adaskip.tracking.model` reads
the tables beside the MLflow Model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from .errors import AdaskipError
from .evaluation.latency import LONG_COLUMNS, latency_long, latency_wide
from .select import Budget, SelectError, choose, verdict

BUDGET_KEYS = ("max_latency_ms", "max_macs", "min_acc", "batch", "prefer")
ATTACHED = "adaskip"  # folder beside a served MLflow Model (Tracker.attach_to_model): the grid, latency/*.csv
GRID_FILE, LATENCY_DIR = "eval_grid.csv", "latency"
GRID_COLUMNS = ["skip", "acc1", "acc5", "macs", "params", "pareto"]  # what serving keeps of an evaluation grid


class RequestError(AdaskipError, ValueError):
    """A request's parameters are wrong or cannot be met: the message starts with what, then the valid values."""


@dataclass(frozen=True)
class Menu:
    """What a served model answers with: its sub-networks, the evaluation grid (None: never evaluated) and the
    latency table (long form) of the device and thread count it serves with."""

    num_stages: int
    grid: Optional[pd.DataFrame]
    latency: pd.DataFrame
    default: str  # the sub-network that answers a request with neither skip nor budget
    answers: dict = field(default_factory=dict, compare=False, repr=False)  # budget -> (skip, error, figures)

    def pick(self, params: Optional[Mapping[str, Any]]) -> tuple[str, Optional[dict[str, Any]]]:
        """The skip string that answers a request with ``params`` and, when a budget chose it, the figures it was
        chosen by (the grid's top-1, MACs, the expected p50 and its batch size); a RequestError when a parameter is
        wrong or nothing fits."""
        given = {k: v for k, v in (params or {}).items() if v is not None}
        budget = {k: given[k] for k in BUDGET_KEYS if k in given}
        if "skip" in given and budget:
            raise RequestError(f"skip and a budget ({', '.join(budget)}) were both given: pass one of them")
        if not budget:
            return self.skip(given.get("skip", self.default)), None
        if self.grid is None:
            raise RequestError(
                "this model has no evaluation grid, so a budget cannot be met: pass skip (one of "
                f"{self.skips()}), or run the evaluate stage to attach its grid"
            )
        key = tuple(sorted(budget.items()))
        if key not in self.answers:  # the same budgets come back: a choice is pandas work, a lookup is not
            if len(self.answers) >= 4096:
                self.answers.clear()
            self.answers[key] = self._choose(budget)
        skip, error, figures = self.answers[key]
        if error:
            raise RequestError(error)
        return skip, figures

    def _choose(self, budget: dict[str, Any]) -> tuple[str, str, Optional[dict[str, Any]]]:
        """(the chosen skip, "", its figures) or ("", what is wrong, None)."""
        try:
            wanted = Budget(**budget, cli=False).check()
            choice = choose(self.table, wanted)
        except SelectError as e:
            return "", str(e), None
        if choice.chosen is None:
            return "", verdict(choice, wanted), None
        row = choice.chosen
        figures = {"acc1": float(row["acc1"]), "macs": float(row["macs"])}
        if choice.p50:
            figures |= {"p50_ms": float(row[choice.p50]), "batch": int(choice.batch or 1)}
        return str(row["skip"]), "", figures

    @cached_property
    def table(self) -> pd.DataFrame:
        """The grid with this device's latency columns: what ``adaskip select`` reads."""
        return self.grid.merge(latency_wide(self.latency), on="skip")

    def skip(self, value: Any) -> str:
        """``value`` as a valid skip string of this model (case-insensitive), else a RequestError listing them."""
        text = str(value).upper()
        if len(text) != self.num_stages or set(text) - {"T", "F"}:
            raise RequestError(
                f"skip {value!r} is not a sub-network of this model: give one T (skip) or F (run) per "
                f"stage, {self.num_stages} letters: {self.skips()}"
            )
        return text

    def skips(self) -> str:
        return f"{'F' * self.num_stages} (super-net) ... {'T' * self.num_stages} (base-net)"


def device_table(tables: Iterable[pd.DataFrame], device: str, threads: int) -> pd.DataFrame:
    """The rows of ``tables`` (long form; later tables win) measured on ``device`` with ``threads`` threads."""
    rows = pd.concat([t[LONG_COLUMNS] for t in tables] or [pd.DataFrame(columns=LONG_COLUMNS)], ignore_index=True)
    rows = rows[(rows["device"] == device) & (rows["threads"] == threads)]
    return rows.drop_duplicates(["skip", "batch_size"], keep="last").reset_index(drop=True)


def build_menu(
    net,
    image_size: int,
    grid: Optional[pd.DataFrame],
    tables: list[pd.DataFrame],
    default: Optional[str] = None,
    log=print,
) -> Menu:
    """The menu of ``net`` serving in this process: ``tables``' rows for this device and thread count, or, when they
    do not cover every sub-network, every sub-network measured now (at the batch sizes the tables hold, else 1), and
    said so through ``log``."""
    import torch

    from .evaluation.complexity import device_name, latency_long_table

    device, threads, n = device_name(next(net.parameters()).device), torch.get_num_threads(), 2**net.num_stages
    table = device_table(tables, device, threads)
    batches = sorted({int(b) for t in tables for b in t["batch_size"]}) or [1]
    if table.empty or table.groupby("batch_size")["skip"].nunique().min() < n:
        start = time.perf_counter()
        table = latency_long_table(net, None, (3, image_size, image_size), batches)
        log(
            f"adaskip: no latency table for {device} with {threads} thread(s) covers all {n} sub-networks: measured "
            f"them at load, batch {', '.join(map(str, batches))}, in {time.perf_counter() - start:.1f} s "
            "(adaskip profile measures and attaches one)"
        )
    else:
        log(f"adaskip: latency table for {device} with {threads} thread(s): {len(table)} rows")
    kept = None if grid is None else grid[[c for c in GRID_COLUMNS if c in grid.columns]]
    return Menu(net.num_stages, kept, table, (default or "F" * net.num_stages).upper())


def read_attached(root: Path) -> tuple[pd.DataFrame | None, list[pd.DataFrame]]:
    """The evaluation grid (None: not attached) and the latency tables beside an MLflow Model: the grid's own first,
    then the attached ones (``adaskip profile``'s win where they measured the same device and threads)."""
    folder = Path(root) / ATTACHED
    grid = pd.read_csv(folder / GRID_FILE, dtype={"skip": str}) if (folder / GRID_FILE).is_file() else None
    files = sorted((folder / LATENCY_DIR).glob("*.csv"))
    return grid, ([] if grid is None else [_long(grid)]) + [pd.read_csv(f, dtype={"skip": str}) for f in files]


def _long(grid: pd.DataFrame) -> pd.DataFrame:
    try:
        return latency_long(grid)
    except ValueError:  # a grid without latency columns
        return pd.DataFrame(columns=LONG_COLUMNS)
