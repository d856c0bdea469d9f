"""The study planner and the compare stage's corrected verdicts, checked by simulation (numpy: seconds).

What a simulated study is: ``m = 3`` comparisons, each a reference and a baseline trained on the same seeds and
tested on the same 270 images (the digits test split). A seed's difference between the two is drawn as the true
difference on this test set plus normal seed-to-seed noise of spread ``SD``, then rounded to whole images (one image
= 100/270 %p): the test set is fixed, so "no effect" means no difference on this test set, and its own sampling
error is not in the draw (the planner reports it apart, as the population floor). The pilot, the plan, the study and
the compare stage's verdicts are adaskip's own functions: ``plan.plan`` (what ``adaskip study plan`` runs),
``power.paired_p`` and ``power.holm`` (what ``stats.compare`` runs over comparison.csv).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adaskip.ablation import power, stats
from adaskip.ablation.plan import PlanError, Spread, Target, plan, seeds_needed
from helpers import ROOT

N_TEST, SD, DETECT, M = 270, 1.0, 1.0, 3
STEP = 100 / N_TEST


def _draw(rng, effects: np.ndarray, seeds: int, studies: int) -> np.ndarray:
    """Per-seed differences, shape (studies, comparisons, seeds), in whole images."""
    raw = effects[None, :, None] + SD * rng.standard_normal((studies, len(effects), seeds))
    return np.round(raw / STEP) * STEP


def _found(deltas: np.ndarray, corrected: bool = True) -> np.ndarray:
    """The compare stage's verdicts: better or worse where the (Holm-corrected) p-value is below 5 %."""
    p = power.paired_p(deltas, N_TEST)
    return (power.holm(p) if corrected else p) < power.ALPHA


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert power.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = power.holm([0.02, np.nan, 0.5])  # NaN (one seed) is not a comparison: a family of two
    assert out[0] == pytest.approx(0.04) and np.isnan(out[1]) and out[2] == pytest.approx(0.5)


def test_seeds_are_the_fewest_with_the_power():
    n = power.seeds_for(DETECT, SD, M)
    assert power.power_of(n, DETECT, SD, 0.05 / M) >= 0.8 > power.power_of(n - 1, DETECT, SD, 0.05 / M)
    assert power.spread_bound(0.0, 3, N_TEST) > 0  # identical deltas over a pilot still plan on half an image


def test_a_known_spread_detects_the_effect_as_often_as_planned():
    """--sd: the plan's seeds and predicted power; 2000 studies with one true effect of DETECT among M comparisons
    find it (Holm) about as often as predicted: within 3 standard errors of the simulation."""
    (planned,) = plan([Spread("one", SD, None, N_TEST, 90.0)], Target(DETECT, M))
    rng = np.random.default_rng(1)
    studies = 2000
    found = _found(_draw(rng, np.array([DETECT, 0.0, 0.0]), planned.seeds, studies))[:, 0]
    rate, se = found.mean(), math.sqrt(planned.power * (1 - planned.power) / studies)
    print(f"\nknown spread: {planned.seeds} seeds, predicted power {planned.power:.3f}, found {rate:.3f} (SE {se:.3f})")
    assert abs(rate - planned.power) <= 3 * se


def test_pilot_plan_study_compare_finds_the_effect_at_least_as_often_as_planned():
    """A pilot of 3 seeds per comparison -> the plan (each spread at its 80 % upper bound, the study's seeds the
    largest) -> a study of that many new seeds -> Holm: over 2000 simulated studies, the effect is found at least as
    often as the planner predicted (its bound errs on the side of more seeds), within 3 standard errors."""
    rng = np.random.default_rng(2)
    effects, studies = np.array([DETECT, 0.0, 0.0]), 2000
    pilots = _draw(rng, effects, 3, studies)
    found, predicted, refused = [], [], 0
    for pilot in pilots:
        spreads = [Spread(str(j), float(d.std(ddof=1)), 3, N_TEST, 90.0) for j, d in enumerate(pilot)]
        try:
            planned = plan(spreads, Target(DETECT, M, most=400))
        except PlanError:
            refused += 1
            continue
        seeds = seeds_needed(planned)
        predicted.append(float(power.power_of(seeds, DETECT, planned[0].sd_plan, 0.05 / M)))  # at the study's seeds
        found.append(_found(_draw(rng, effects, seeds, 1))[0, 0])
    rate, expected = np.mean(found), np.mean(predicted)
    se = math.sqrt(expected * (1 - expected) / len(found))
    print(f"\npilot plans: {len(found)} studies ({refused} refused), predicted {expected:.3f}, found {rate:.3f}")
    assert refused < 0.05 * studies and rate >= expected - 3 * se


def test_with_no_effect_holm_keeps_the_family_wise_error_at_five_percent():
    """10000 studies of M comparisons with no difference on this test set, at the seed count planned for DETECT:
    Holm's family-wise false-positive rate is at most 5 % (within 3 standard errors); uncorrected it is not."""
    rng = np.random.default_rng(3)
    studies, seeds = 10000, power.seeds_for(DETECT, SD, M)
    deltas = _draw(rng, np.zeros(M), seeds, studies)
    holm = _found(deltas).any(axis=1).mean()
    raw = _found(deltas, corrected=False).any(axis=1).mean()
    se = math.sqrt(0.05 * 0.95 / studies)
    print(f"\nno effect, {seeds} seeds: family-wise false positives {holm:.4f} with Holm, {raw:.4f} uncorrected")
    assert holm <= 0.05 + 3 * se and raw > 0.05 + 3 * se


def _rows(deltas: dict[str, list[float]]) -> pd.DataFrame:
    """A reference and one baseline per configuration whose per-seed differences are ``deltas``, on 10000 images."""
    r = []
    for skip, ds in deltas.items():
        for seed, d in enumerate(ds):
            common = {"skip": skip, "macs": 10 * len(r), "acc5": 99.0, "n": 10000, "seed": seed}
            r += [{**common, "variant": "adn", "acc1": 90 + d / 2, "baseline": None}]
            r += [{**common, "variant": f"ind_{skip}", "acc1": 90 - d / 2, "baseline": skip}]
    return pd.DataFrame(r)


def test_the_compare_stage_verdicts_are_corrected_and_agree_with_their_intervals():
    """Three comparisons: one clear, one that only an uncorrected test calls, one null. The corrected intervals
    exclude zero exactly where the Holm p-value is below 5 %; the one that the 95 % interval alone calls better is
    inconclusive; the probability of improvement has a bootstrap interval from 5 seeds, none below."""
    rows = _rows({"FF": [3.0, 3.1, 2.9, 3.0, 3.2], "FT": [0.9, 0.1, 1.1, 0.3, 0.8], "TT": [0.5, -0.4, 0.1, -0.3, 0.0]})
    cmp = stats.compare(rows, "adn").set_index("skip")
    assert (cmp.family == 3).all() and cmp.loc["FT", "ci_low"] > 0  # uncorrected: FT looks better
    for r in cmp.itertuples():
        assert (r.ci_holm_low > 0 or r.ci_holm_high < 0) == (r.p_holm < 0.05), r
    verdicts = {r.Index: stats.verdict(r.ci_holm_low, r.ci_holm_high, r.detectable, r.seeds) for r in cmp.itertuples()}
    assert verdicts["FF"] == "better" and verdicts["FT"].startswith("inconclusive")
    assert cmp.loc["FF", "p_improve"] == 1.0 and cmp.loc["FF", "p_improve_low"] == 1.0
    few = stats.compare(_rows({"FF": [3.0, 3.1, 2.9]}), "adn").iloc[0]
    assert few.p_improve == 1.0 and math.isnan(few.p_improve_low)


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, float, set[str]]:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("adaskip")), "study", "plan", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    lines = done.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    return done, time.perf_counter() - start, imported


def test_an_impossible_difference_is_refused_in_seconds_before_torch_or_ray():
    """Below one test image, and more than --max-seeds: exit 2, one line saying what would help, no torch or Ray."""
    for args, words in (
        (["--detect", "0.2"], "below what 270 test images resolve"),
        (["--detect", "0.4", "--max-seeds", "20"], "no seed count up to 20 detects 0.4 %p"),
    ):
        done, seconds, imported = _cli(*args)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(errors) == 1 and words in errors[0], done.stderr[-2000:]
        assert seconds < 15 and not {"torch", "ray", "timm"} & imported, (seconds, {"torch", "ray"} & imported)


def test_the_plan_from_the_recorded_study_and_from_a_published_spread():
    """The recorded digits study's cells as the pilot: one row per comparison with its pilot spread and seeds; a
    paper-scale plan from --sd / --test-size without a pilot."""
    done, _, _ = _cli("--detect", "1", "--no-waves")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| FFFF: adn vs individual_full | 3 |" in done.stdout and "cost:" in done.stdout
    assert "one image = 0.37 %p" in done.stdout
    done, _, _ = _cli("--detect", "0.5", "--sd", "0.15", "--test-size", "50000", "--comparisons", "3", "--no-waves")
    assert done.returncode == 0 and "| as given | given | 0.15 | 0.15 | 4 |" in done.stdout, done.stdout
