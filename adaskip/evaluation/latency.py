"""Latency tables as pandas only (no torch): the long form, one row per configuration x batch size x thread
count (:data:`LONG_COLUMNS`), and the evaluation grid's wide columns ``latency_ms``, ``latency_p50_ms_b{B}[_t{T}]``,
``latency_p90_ms_b{B}[_t{T}]``, ``device`` and ``threads``. Every figure is milliseconds per forward of one batch."""

from __future__ import annotations

import re
import time
from typing import Callable, Mapping, Optional

import numpy as np
import pandas as pd

LONG_COLUMNS = ["skip", "device", "batch_size", "threads", "p50_ms", "p90_ms"]
_WIDE = re.compile(r"^latency_(p50|p90)_ms_b(\d+)(?:_t(\d+))?$")


def latency_column(batch_size: int, threads: Optional[int] = None, stat: str = "p50") -> str:
    """``latency_p50_ms_b32`` (one thread setting) or ``latency_p50_ms_b32_t4`` (several)."""
    return f"latency_{stat}_ms_b{batch_size}" + ("" if threads is None else f"_t{threads}")


def latency_wide(long: pd.DataFrame) -> pd.DataFrame:
    """One row per ``skip`` from a :func:`latency_long_table`: ``latency_ms`` (p50 at the first batch size and
    first thread count, milliseconds per batch), ``latency_p50_ms_b{B}`` / ``latency_p90_ms_b{B}`` for every batch
    size (suffix ``_t{T}`` when there are several thread counts), ``device`` and ``threads`` (the first count)."""
    counts = list(dict.fromkeys(long["threads"]))
    first_b, first_t = long["batch_size"].iloc[0], counts[0]
    out = long.drop_duplicates("skip")[["skip", "device"]].assign(threads=first_t).set_index("skip")
    for (t, b), part in long.groupby(["threads", "batch_size"], sort=False):
        suffix = t if len(counts) > 1 else None
        part = part.set_index("skip")
        for stat in ("p50", "p90"):
            out[latency_column(b, suffix, stat)] = part[f"{stat}_ms"]
    out.insert(0, "latency_ms", out[latency_column(first_b, first_t if len(counts) > 1 else None)])
    return out.reset_index()


def wide_columns(columns: list[str]) -> list[tuple[int, Optional[int]]]:
    """``(batch_size, threads)`` of each ``latency_p50_ms_b{B}[_t{T}]`` column, in column order (threads ``None``:
    no suffix, the grid's ``threads`` column applies)."""
    found = (m.groups() for c in columns if (m := _WIDE.match(c)) and m.group(1) == "p50")
    return [(int(b), None if t is None else int(t)) for _, b, t in found]


def latency_long(grid: pd.DataFrame) -> pd.DataFrame:
    """The long form (:data:`LONG_COLUMNS`) of a grid's wide latency columns (:func:`latency_wide`)."""
    keys = wide_columns(list(grid.columns))
    parts = []
    for b, t in keys:
        part = grid[["skip", "device"]].assign(batch_size=b, threads=grid["threads"] if t is None else t)
        parts.append(part.assign(p50_ms=grid[latency_column(b, t)], p90_ms=grid[latency_column(b, t, "p90")]))
    if not parts:
        raise ValueError(f"the grid has no latency_p50_ms_b<B> columns: {list(grid.columns)}")
    return pd.concat(parts, ignore_index=True)[LONG_COLUMNS]


def interleaved(
    calls: Mapping[str, Callable[[], object]], seconds: float, min_rounds: int = 5, max_rounds: int = 200
) -> dict[str, np.ndarray]:
    """Milliseconds of each call of ``calls``, timed in rounds that run every call once, each round starting one call
    further on (a machine that slows down or speeds up during the measurement shifts every call alike): one untimed
    warm-up round, then as many rounds as fit in ``seconds`` (at least ``min_rounds``, at most ``max_rounds``)."""
    names = list(calls)
    start = time.perf_counter()
    for name in names:
        calls[name]()
    per_round = max(time.perf_counter() - start, 1e-6)
    rounds = int(min(max_rounds, max(min_rounds, seconds / per_round)))
    times = {name: np.empty(rounds) for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            calls[name]()
            times[name][r] = 1000.0 * (time.perf_counter() - t)
    return times
