"""How many seeds a study needs, and what its comparisons conclude: numpy and scipy only (no torch, no Ray, no
config), shared by the planner (``adaskip study plan``), the compare stage and the simulation that checks both.

The model. A comparison pairs the reference network with a baseline seed by seed, both tested on the same test set
of ``n`` images: its per-seed differences ``delta`` (percentage points) vary from seed to seed around a true mean
difference ``mu`` *on this test set*, and come in steps of one image (``100 / n`` %p). "No effect" means ``mu = 0``
on this test set; a difference in the population of images also needs ``mu`` above the test set's own sampling
error (:func:`population_floor`), which no number of seeds reduces.

The test. A two-sided paired t-test of ``mu = 0`` per comparison, its p-values corrected with Holm's step-down over
the study's family (every row of comparison.csv). Planning uses Bonferroni's level ``alpha / m``, Holm's first and
strictest step: the power Holm then gives is at least the planned one (exactly it when one comparison has an
effect). A sample spread below half an image step cannot be measured on the test set and is raised to it
(:func:`spread_floor`): deltas that happen to be identical over a few seeds say nothing about the next seed.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats

ALPHA, POWER = 0.05, 0.80
SD_CONFIDENCE = 0.80  # the pilot's spread is planned on at this one-sided upper confidence bound
MAX_SEEDS = 100
MIN_BOOTSTRAP_SEEDS = 5  # below this per side, a bootstrap of the probability of improvement has too few resamples
BOOTSTRAP_REPS = 2000


def resolution(test_size: float) -> float:
    """One image of the test set, in percentage points: the step every accuracy and every delta moves by."""
    return 100.0 / test_size


def spread_floor(test_size: float) -> float:
    """The smallest seed-to-seed spread a test set of ``test_size`` images can measure: half an image step."""
    return resolution(test_size) / 2


def population_floor(accuracy: float, test_size: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest difference (%p) between two networks' accuracies near ``accuracy`` % that ``test_size`` test
    images resolve for the population of images (binomial sampling of both, 80 % power): seeds do not lower it."""
    p = min(max(accuracy / 100, 0.0), 1.0)
    return (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * math.sqrt(2 * p * (1 - p) / test_size) * 100


def spread_bound(sd: float, seeds: int, test_size: Optional[float] = None, confidence: float = SD_CONFIDENCE) -> float:
    """The spread to plan on from a pilot's sample standard deviation ``sd`` over ``seeds`` seeds: its one-sided
    ``confidence`` upper bound, ``sd * sqrt((k - 1) / chi2(1 - confidence, k - 1))``, after the floor."""
    if seeds < 2:
        raise ValueError(f"a pilot needs at least 2 seeds to estimate a spread, got {seeds}")
    sd = max(sd, spread_floor(test_size)) if test_size else sd
    return float(sd * math.sqrt((seeds - 1) / stats.chi2.ppf(1 - confidence, seeds - 1)))


def power_of(seeds: int | np.ndarray, detect: float, sd: float, alpha: float) -> np.ndarray | float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``seeds`` pairs, for a true mean difference
    ``detect`` and a per-seed spread ``sd`` (noncentral t)."""
    k = np.asarray(seeds, dtype=float)
    df = np.maximum(k - 1, 1)
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = detect / sd * np.sqrt(k)
    out = stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp)
    normal = stats.norm.sf(crit - ncp) + stats.norm.cdf(-crit - ncp)  # where scipy's nct gives up (a large ncp)
    out = np.where(np.isnan(out), normal, out)
    return np.where(k >= 2, out, 0.0) if np.ndim(out) else (float(out) if k >= 2 else 0.0)


def seeds_for(
    detect: float, sd: float, comparisons: int, alpha: float = ALPHA, power: float = POWER, most: int = MAX_SEEDS
) -> Optional[int]:
    """The fewest seeds (2..``most``) whose paired t-test at ``alpha / comparisons`` detects ``detect`` with
    ``power``; None when none up to ``most`` does."""
    enough = np.nonzero(_smallest_effects(alpha / comparisons, power, most) <= detect / sd)[0]
    if not len(enough):
        return None
    k = int(enough[0]) + 2
    while k <= most and power_of(k, detect, sd, alpha / comparisons) < power:  # the table's last digit
        k += 1
    return k if k <= most else None


@functools.lru_cache(maxsize=16)
def _smallest_effects(level: float, power: float, most: int) -> np.ndarray:
    """For k = 2..most seeds: the smallest difference, in units of the spread, that the test at ``level`` detects
    with ``power`` (bisection over every k at once: a plan is a lookup, a simulation of thousands of plans cheap)."""
    k = np.arange(2, most + 1)
    low, high = np.zeros(len(k)), np.full(len(k), 100.0)
    for _ in range(60):
        mid = (low + high) / 2
        reached = power_of(k, mid, 1.0, level) >= power
        high, low = np.where(reached, mid, high), np.where(reached, low, mid)
    return high


def paired_p(deltas: np.ndarray, test_size: Optional[float] = None) -> np.ndarray:
    """Two-sided p-values of paired t-tests of ``mean = 0`` along the last axis of ``deltas`` (seeds), the spread
    raised to :func:`spread_floor` where the test set is known; NaN with fewer than two seeds."""
    d = np.asarray(deltas, dtype=float)
    k = d.shape[-1]
    if k < 2:
        return np.full(d.shape[:-1], np.nan)
    sd = d.std(axis=-1, ddof=1)
    if test_size:
        sd = np.maximum(sd, spread_floor(test_size))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d.mean(axis=-1) / (sd / math.sqrt(k))
    return np.where(sd > 0, 2 * stats.t.sf(np.abs(t), k - 1), np.where(d.mean(axis=-1) == 0, 1.0, 0.0))


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values along the last axis (NaN stays NaN and does not count)."""
    p = np.asarray(p, dtype=float)
    m = np.sum(~np.isnan(p), axis=-1, keepdims=True)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1)
    scaled = np.minimum(1.0, (m - np.arange(p.shape[-1])) * ranked)
    adjusted = np.fmax.accumulate(scaled, axis=-1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, np.where(np.isnan(ranked), np.nan, adjusted), axis=-1)
    return out


def corrected_interval(deltas: Sequence[float], p: float, p_holm: float, alpha: float, test_size: Optional[float]):
    """The t-interval of the mean delta at the level Holm tested this comparison at (``alpha * p / p_holm``): it
    excludes zero exactly when the Holm-corrected verdict is better or worse."""
    d = np.asarray(deltas, dtype=float)
    k = len(d)
    if k < 2 or not p_holm > 0:
        return (float(d.mean()), float(d.mean())) if k >= 2 else (math.nan, math.nan)
    level = alpha * p / p_holm
    sd = max(float(d.std(ddof=1)), spread_floor(test_size) if test_size else 0.0)
    half = stats.t.ppf(1 - level / 2, k - 1) * sd / math.sqrt(k)
    return float(d.mean() - half), float(d.mean() + half)


def probability_of_improvement(a: Sequence[float], b: Sequence[float]) -> float:
    """P(X > Y) for X a run of ``a`` and Y a run of ``b`` (ties count half): the Mann-Whitney statistic over every
    pair of seeds (Agarwal et al. 2021; Bouthillier et al. 2021)."""
    x, y = np.asarray(a, dtype=float)[:, None], np.asarray(b, dtype=float)[None, :]
    return float(np.mean((x > y) + 0.5 * (x == y)))


def improvement_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95, reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of :func:`probability_of_improvement`, resampling the seeds of each side
    separately (stratified); NaN when either side has fewer than :data:`MIN_BOOTSTRAP_SEEDS` seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if min(len(a), len(b)) < MIN_BOOTSTRAP_SEEDS:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    x = a[rng.integers(0, len(a), (reps, len(a)))][:, :, None]
    y = b[rng.integers(0, len(b), (reps, len(b)))][:, None, :]
    values = np.mean((x > y) + 0.5 * (x == y), axis=(1, 2))
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)
