"""``adaskip study plan``: how many seeds a study needs to detect a difference, planned from a pilot (an existing
study's cells) or from a spread the user gives (``--sd``, ``--test-size``). numpy, scipy and pandas only: a request
that cannot be met is refused before torch or Ray is imported.

For each comparison (a row of the compare stage's comparison.csv) the plan takes the paired per-seed spread of the
pilot (the sample standard deviation of reference-minus-baseline deltas), raised to half an image step and then to
its one-sided 80 % upper confidence bound (a pilot of few seeds underestimates the spread as often as not), and finds
the fewest seeds whose paired t-test, at alpha divided by the number of comparisons, detects ``--detect`` with 80 %
power (:mod:`adaskip.ablation.power`). The study as a whole needs the largest of those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from ..errors import AdaskipError
from . import power as pw
from .stats import paired


class PlanError(AdaskipError, ValueError):
    """The plan cannot be made as asked: a difference below the test set's resolution, or that no seed count up to
    the maximum detects; the message says what would help."""


@dataclass(frozen=True)
class Target:
    detect: float  # the difference to detect, percentage points
    comparisons: int  # the family the verdicts are corrected over
    alpha: float = pw.ALPHA
    power: float = pw.POWER
    most: int = pw.MAX_SEEDS

    @property
    def level(self) -> float:
        """The per-comparison level planned on: Bonferroni's, Holm's strictest step."""
        return self.alpha / self.comparisons


@dataclass(frozen=True)
class Spread:
    """What one comparison's planning starts from."""

    name: str  # "FFFF: adn vs individual_full"
    sd: float  # the pilot's sample spread of the deltas (or the one given)
    pilot_seeds: Optional[int]  # None: given (--sd), taken as known
    test_size: float
    accuracy: float  # near which the two networks are, %


@dataclass(frozen=True)
class Planned:
    spread: Spread
    sd_plan: float  # the spread planned on
    seeds: int
    power: float  # at ``seeds`` with ``sd_plan``


def pilot_spreads(rows: pd.DataFrame, reference: str) -> list[Spread]:
    """One Spread per comparison the compare stage makes from the cells' ``rows``."""
    pairs = paired(rows, reference)
    out = []
    for (skip, baseline), p in pairs.groupby(["skip", "variant_baseline"], sort=False):
        if len(p) < 2:
            raise PlanError(f"{skip}: {reference} vs {baseline}: the pilot pairs {len(p)} seed; a spread needs 2")
        if p.test_images.isna().any():
            raise PlanError("the pilot's rows have no test-set size (column n): plan with --sd and --test-size")
        name = f"{skip}: {reference} vs {baseline}"
        accuracy = (p.acc1.mean() + p.acc1_baseline.mean()) / 2
        out.append(Spread(name, float(p.delta.std(ddof=1)), len(p), float(p.test_images.min()), float(accuracy)))
    if not out:
        raise PlanError(
            f"the pilot has no comparison: no baseline variant shares a configuration and a seed with {reference!r}"
        )
    return out


def plan(spreads: list[Spread], target: Target) -> list[Planned]:
    """Each comparison's seeds; a PlanError when the difference is below a test set's resolution or no seed count up
    to ``target.most`` detects it."""
    out = []
    for s in spreads:
        step = pw.resolution(s.test_size)
        if target.detect < step:
            raise PlanError(
                f"{target.detect:g} %p is below what {s.test_size:g} test images resolve: one image is {step:.3g} %p "
                f"({s.name}); detect at least {step:.3g} %p, or test on more images"
            )
        sd = pw.spread_bound(s.sd, s.pilot_seeds, s.test_size) if s.pilot_seeds else s.sd
        seeds = pw.seeds_for(target.detect, sd, target.comparisons, target.alpha, target.power, target.most)
        if seeds is None:
            at_most = pw.power_of(target.most, target.detect, sd, target.level)
            raise PlanError(
                f"no seed count up to {target.most} detects {target.detect:g} %p in {s.name} (spread planned at "
                f"{sd:.3g} %p, alpha {target.alpha:g} over {target.comparisons} comparisons): {target.most} seeds "
                f"give {at_most * 100:.0f} % power; detect a larger difference, raise --max-seeds, or lower the spread "
                "(more test images, less seed-dependent training)"
            )
        out.append(Planned(s, sd, seeds, float(pw.power_of(seeds, target.detect, sd, target.level))))
    return out


def report(planned: list[Planned], target: Target, source: str) -> str:
    """The plan as a person reads it: the target, the source of the spreads, one line per comparison."""
    sizes = sorted({p.spread.test_size for p in planned})
    lines = [
        f"plan: detect {target.detect:g} %p with {target.power * 100:.0f} % power at alpha {target.alpha:g}, Holm over "
        f"{target.comparisons} comparison{'s' if target.comparisons != 1 else ''} (planned at its strictest step, "
        f"alpha {target.level:.3g} each: Holm's power is at least this)",
        f"spreads: {source}",
    ]
    for n in sizes:
        acc = max(p.spread.accuracy for p in planned if p.spread.test_size == n)
        lines.append(
            f"test set: {n:g} images: one image = {pw.resolution(n):.3g} %p; a difference in the population of "
            f"images (not only on these images) also needs >= {pw.population_floor(acc, n):.2g} %p near "
            f"{acc:.3g} % (binomial), whatever the seeds"
        )
    lines += [
        "",
        "| comparison | pilot seeds | spread (sd of deltas, %p) | planned on | seeds | power |",
        "|---|---|---|---|---|---|",
    ]
    for p in planned:
        k = str(p.spread.pilot_seeds) if p.spread.pilot_seeds else "given"
        lines.append(f"| {p.spread.name} | {k} | {p.spread.sd:.3g} | {p.sd_plan:.3g} | {p.seeds} | {p.power:.2f} |")
    return "\n".join(lines)


def seeds_needed(planned: list[Planned]) -> int:
    return max(p.seeds for p in planned)


def check_target(detect: float, comparisons: int, most: int) -> None:
    if not (isinstance(detect, (int, float)) and math.isfinite(detect) and detect > 0):
        raise PlanError(f"--detect must be a difference > 0 in percentage points, got {detect!r}")
    if comparisons < 1 or most < 2:
        raise PlanError(f"need --comparisons >= 1 and --max-seeds >= 2, got {comparisons} and {most}")
