"""A study's cache of finished cells: what identifies a cell's results (its hash), the names of its rows and of its
trained models there, and which cells are done. No Ray and no torch here: a stage whose cells are all done collects
their rows with this alone."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import pandas as pd

from ..files import short_hash
from .spec import Cell

CELL_SECTIONS = {"data", "model", "train", "evaluate"}  # what a cell trains and evaluates with (its DVC params too)
NOT_RESULTS = {"train": {"placement", "max_failures"}}  # where and how often it may restart: the same results


def cell_hash(cell: Cell) -> str:
    """The identity of a cell's results: its params sections that change them (not where runs are tracked or
    stored, the sweep's settings, the placement of its workers or its restart limit), its baseline and teacher."""
    params = cell.params.model_dump(mode="json", include=CELL_SECTIONS, exclude=NOT_RESULTS)
    spec = {"params": params, "baseline": cell.baseline}
    if cell.teacher:  # only when set: hashes of cells without a teacher stay as they were
        spec["teacher"] = cell.teacher
    return short_hash(spec)


def run_ahead(cells: list[Cell], results: Mapping[str, str | os.PathLike]) -> list[Cell]:
    """The cells whose variant's results file (``results[variant]``) does not hold them, by cell hash: DVC will
    run those variants' stages next, and they then find these cells finished in the study's cache. A file written
    before cells recorded their hash counts as up to date (DVC alone decides about it)."""
    ahead = []
    for variant, path in results.items():
        try:
            recorded = pd.read_csv(path, usecols=lambda c: c == "cell_hash").get("cell_hash")
        except FileNotFoundError:
            recorded = pd.Series([], dtype=str)
        if recorded is not None:
            recorded = set(recorded)
            ahead += [c for c in cells if c.variant == variant and cell_hash(c) not in recorded]
    return ahead


def cell_file(cell: Cell) -> str:
    """The cell's rows in the study's cache, named by its params hash."""
    return f"{cell.key}-{cell_hash(cell)}.csv"


def teacher_cell(cell: Cell) -> Cell:
    """What a KD baseline's teacher is: its sub-network trained alone with the cell's params and seed. That is the
    cell of the study's individually trained baseline of that sub-network, if it has one (the same hash): the
    teacher is then trained once, by that cell, and shared."""
    return dataclasses.replace(cell, baseline=cell.teacher, teacher=None)


def run_name(cell: Cell) -> str:
    """The name of a cell's Ray Train run and of its trained model file (``<name>.pt``) in the study's cache."""
    return f"cell-{cell_hash(cell)}"


def teacher_name(cell: Cell) -> Optional[str]:
    """The run and model file of a KD baseline's teacher (see teacher_cell); None for other cells."""
    return run_name(teacher_cell(cell)) if cell.teacher else None


def unfinished(cells: list[Cell], cache: Any) -> list[Cell]:
    """The cells whose rows are not in the study's cache yet (``cache``: the orchestration layer's Storage, or
    anything with its ``exists`` and ``read_csv``)."""
    return [c for c in cells if not cache.exists(cell_file(c))]


def collect(cells: list[Cell], cache: Any) -> pd.DataFrame:
    """The rows of finished ``cells``, from the cache."""
    return pd.concat([cache.read_csv(cell_file(c)) for c in cells], ignore_index=True)
