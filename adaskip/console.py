"""What a person reads while a stage runs: one line per epoch, one per stage, progress bars only on a terminal,
and Ray's repeated status lines left out (``ADASKIP_VERBOSE=1`` or a stage's ``-v`` brings Ray's output back)."""

from __future__ import annotations

import os
import re
import sys
from typing import Mapping


VERBOSE_ENV = "ADASKIP_VERBOSE"  # "1": Ray's full output (set by a stage's -v, inherited by Ray's local workers)
PROGRESS_ENV = "ADASKIP_PROGRESS"  # "1" / "0": progress bars on / off; unset: on when stderr is a terminal


def verbose() -> bool:
    """Whether the user asked for everything Ray prints (``ADASKIP_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def progress_bars() -> bool:
    """Whether to draw tqdm bars: ``ADASKIP_PROGRESS`` when set (the stage sets it from its own stderr before it starts
    Ray, so workers, whose output is never a terminal, follow the driver), else whether stderr is a terminal."""
    flag = os.environ.get(PROGRESS_ENV)
    if flag is not None:
        return flag not in ("", "0")
    return sys.stderr.isatty()


def duration(seconds: float) -> str:
    """``"12.3 s"``, ``"1 min 12 s"``, ``"1 h 02 min"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def si(n: float) -> str:
    """``"3.460 G"``, ``"21.300 M"``, ``"927.360 k"``, ``"12 "``: a count with an SI prefix (append the unit)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:.0f} "


def epoch_line(epoch: int, epochs: int, metrics: Mapping[str, float], seconds: float) -> str:
    """One aligned line per epoch, e.g. ``epoch  3/15  loss 0.812  train  91.2  val super  97.4 base  96.3  lr 0.18
    12.3 s``. Self-distillation reports the super-net's training accuracy; a baseline (one sub-network) its own."""
    width = len(str(epochs))
    loss = metrics.get("train_total", metrics.get("train_loss", float("nan")))
    train = metrics.get("train_acc_super", metrics.get("train_acc_correct", float("nan")))
    return (
        f"epoch {epoch:>{width}}/{epochs}  loss {loss:.3f}  train {train:5.1f}  "
        f"val super {metrics.get('val_acc_super', float('nan')):5.1f} "
        f"base {metrics.get('val_acc_base', float('nan')):5.1f}  "
        f"lr {metrics.get('lr', float('nan')):<7.3g}{seconds:5.1f} s"
    )


# Lines Ray repeats at INFO/WARNING during every run and that tell a user nothing they can act on. Each pattern is
# matched against one forwarded worker line (after Ray's "(name pid=...)" prefix is taken off).
RAY_NOISE = tuple(
    re.compile(p)
    for p in (
        # Ray Train's placement-group watchdog polls the State API, which needs the dashboard adaskip does not start
        r"Failed to query Ray Train Controller actor state",
        r"has constructor arguments in the object store and max_restarts > 0",  # Ray Train's PreemptionWatcher
        r"^Checkpoint successfully created at: ",
        r"^Reporting training result \d+: ",
        r"^(Requesting resources|Attempting to start training worker group|Started training worker group)",
        r"^- \(ip=[^)]*\) world_rank=\d+",  # the lines under "Started ..."
        r"^Setting up process group for: ",
        r"^(Moving model to device|Wrapping provided model in)",
        r"^\s*$",
    )
)


# Ray Train's internal watchdog actors: nothing they print is about the user's run (the placement-group cleaner polls
# the State API, which needs the dashboard; with two Ray instances on one machine it prints a traceback per poll).
RAY_QUIET_ACTORS = ("PlacementGroupCleaner",)


def is_ray_noise(line: str) -> bool:
    """Whether a line forwarded from a Ray worker is one of Ray's repeated status lines (see RAY_NOISE)."""
    return any(p.search(line) for p in RAY_NOISE)


def condense_tracebacks(lines: list[str]) -> list[str]:
    """``lines`` without the frames of Python tracebacks: the line before one (Ray Train's "Error in training
    function:", "Graceful shutdown of backend failed ...") and the exception line it ends with are kept. A worker
    that dies with its host makes every other worker and its controller log one (Ray Train then restarts the group);
    the stage reports what ends a run in one line, and ``-v`` or Ray's log files keep every frame."""
    out, frames = [], False
    for line in lines:
        if line.startswith("Traceback (most recent call last):"):
            frames = True
        elif not (frames and (not line.strip() or line[0].isspace())):
            frames = False
            out.append(line)
    return out
