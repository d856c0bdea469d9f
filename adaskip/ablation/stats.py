"""An ablation study's results: mean +- std over seeds per variant and configuration, the reference
adaptive-depth network against individually trained baselines (paired by seed, with confidence intervals, verdicts
corrected with Holm over every comparison, the smallest detectable difference and the probability of improvement),
per-variant summaries (DVC metrics) and the comparison table in markdown. pandas and scipy only: nothing here builds
a model or trains.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from . import power

METRICS = ("acc1", "acc5")


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count over seeds per (variant, skip) of the cells' grid rows
    (columns ``variant, seed, skip, macs, acc1, acc5``)."""
    g = rows.groupby(["variant", "skip"], sort=False)
    out = g.agg(
        macs=("macs", "first"),
        seeds=("seed", "nunique"),
        **{f"{m}_{f}": (m, f) for m in METRICS for f in ("mean", "std")},
    ).reset_index()
    return out.fillna({f"{m}_std": 0.0 for m in METRICS})  # one seed: no spread, not NaN


COMPARE_COLUMNS = [
    "skip",
    "macs",
    "baseline",
    "seeds",
    "test_images",
    "adn_acc1_mean",
    "adn_acc1_std",
    "baseline_acc1_mean",
    "baseline_acc1_std",
    "delta_acc1_mean",
    "delta_acc1_std",
    "ci_low",
    "ci_high",
    "detectable",
    "family",
    "p_value",
    "p_holm",
    "ci_holm_low",
    "ci_holm_high",
    "p_improve",
    "p_improve_low",
    "p_improve_high",
]
CONFIDENCE, POWER = 0.95, 0.80


def compare(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per configuration that an individual baseline was trained for: the reference adaptive-depth network
    against that baseline, paired by seed. ``delta_*`` is reference minus baseline in percentage points
    (the paper's "+x %p"; positive: the reference is better), mean and std over the seeds both have;
    ``ci_low``/``ci_high`` its 95 % confidence interval and ``detectable`` the smallest difference the study
    could detect (see :func:`paired_stats`); ``test_images`` the test-set size per seed (column ``n`` of the
    rows; NaN when the rows lack it)."""
    pairs = paired(rows, reference)
    if pairs.empty:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    g = pairs.groupby(["skip", "variant_baseline"], sort=False)
    out = g.agg(
        macs=("macs", "first"),
        seeds=("seed", "nunique"),
        test_images=("test_images", "min"),
        adn_acc1_mean=("acc1", "mean"),
        adn_acc1_std=("acc1", "std"),
        baseline_acc1_mean=("acc1_baseline", "mean"),
        baseline_acc1_std=("acc1_baseline", "std"),
        delta_acc1_mean=("delta", "mean"),
        delta_acc1_std=("delta", "std"),
    ).reset_index()
    out = out.rename(columns={"variant_baseline": "baseline"})
    stats = {
        key: paired_stats(p.delta.tolist(), p.test_images.min(), (p.acc1.mean() + p.acc1_baseline.mean()) / 2)
        for key, p in g
    }
    out[["ci_low", "ci_high", "detectable"]] = [stats[(r.skip, r.baseline)] for r in out.itertuples(index=False)]
    out = out.fillna({c: 0.0 for c in ("adn_acc1_std", "baseline_acc1_std", "delta_acc1_std")})  # one seed: no spread
    out = out.join(pd.DataFrame([_corrected(g, r.skip, r.baseline) for r in out.itertuples(index=False)]))
    out["p_holm"] = power.holm(out["p_value"].to_numpy())
    out["family"] = int(out["p_value"].notna().sum())
    out[["ci_holm_low", "ci_holm_high"]] = [
        power.corrected_interval(g.get_group((r.skip, r.baseline)).delta, r.p_value, r.p_holm, power.ALPHA, n)
        if r.seeds >= 2
        else (float("nan"), float("nan"))
        for r, n in zip(out.itertuples(index=False), out["test_images"].where(out["test_images"].notna(), None))
    ]
    return out[COMPARE_COLUMNS].sort_values(["macs", "baseline"], ascending=[False, True], ignore_index=True)


def paired(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The reference's rows joined with each baseline's at the same configuration and seed: ``delta`` (reference
    minus baseline, %p) and ``test_images`` (the smaller test set of the two; NaN when the rows lack ``n``)."""
    ref = rows[rows.variant == reference]
    base = rows[rows.baseline.notna()] if "baseline" in rows else rows.iloc[0:0]
    pairs = ref.merge(base, on=["skip", "seed"], suffixes=("", "_baseline"))
    pairs["delta"] = pairs.acc1 - pairs.acc1_baseline
    pairs["test_images"] = pairs[["n", "n_baseline"]].min(axis=1) if "n" in pairs else float("nan")
    return pairs


def _corrected(groups, skip: str, baseline: str) -> dict[str, float]:
    """The paired t-test's p-value and the probability of improvement (with its bootstrap interval) of one
    comparison."""
    p = groups.get_group((skip, baseline))
    n = p.test_images.min()
    low, high = power.improvement_interval(p.acc1.to_numpy(), p.acc1_baseline.to_numpy())
    return {
        "p_value": float(power.paired_p(p.delta.to_numpy(), n if n == n else None)),
        "p_improve": power.probability_of_improvement(p.acc1.to_numpy(), p.acc1_baseline.to_numpy()),
        "p_improve_low": low,
        "p_improve_high": high,
    }


def paired_stats(
    deltas: list[float], test_images: float = float("nan"), accuracy: float = float("nan")
) -> tuple[float, float, float]:
    """(ci_low, ci_high, detectable) of paired per-seed differences ``deltas`` (in %p), as a study of
    ``k = len(deltas)`` seeds on ``test_images`` test images, with accuracies near ``accuracy`` (%), can state them.

    - Confidence interval: Student's t over the seeds, ``mean +- t(0.975, k-1) * sd / sqrt(k)`` (``sd`` the
      sample standard deviation of the deltas). Undefined (NaN) with one seed.
    - Detectable difference: the larger of two terms, both for a two-sided test at the 5 % level with 80 % power.
      (a) Seeds: ``(t(0.975, k-1) + t(0.80, k-1)) * sd / sqrt(k)``, the usual power approximation of a paired
      t-test: the smallest true mean difference that such a study finds with 80 % probability given the observed
      seed-to-seed spread. NaN with one seed (no spread).
      (b) Test set: ``(z(0.975) + z(0.80)) * sqrt(2 p (1 - p) / n) * 100`` with ``p = accuracy / 100`` and
      ``n = test_images``: the same for two accuracies estimated on ``n`` images each (binomial sampling). Every
      seed is tested on the same images, so this floor does not shrink with more seeds; treating the two
      networks' errors as independent overstates it slightly (they err on correlated images), erring towards
      "inconclusive". Left out when ``test_images`` is unknown.
    The confidence interval covers seed-to-seed variation only; (b) says how large a difference has to be before
    the test set itself can resolve it.
    """
    from scipy import stats

    d = pd.Series(deltas, dtype=float)
    k = len(d)
    floor = float("nan")
    if test_images == test_images and accuracy == accuracy and test_images > 0:  # both known (not NaN)
        p = min(max(accuracy / 100, 0.0), 1.0)
        floor = (
            (stats.norm.ppf(0.5 + CONFIDENCE / 2) + stats.norm.ppf(POWER))
            * (2 * p * (1 - p) / test_images) ** 0.5
            * 100
        )
    if k < 2:
        return float("nan"), float("nan"), floor
    se = float(d.std()) / k**0.5
    t_conf = stats.t.ppf(0.5 + CONFIDENCE / 2, k - 1)
    half = t_conf * se
    seeds_term = (t_conf + stats.t.ppf(POWER, k - 1)) * se
    detectable = seeds_term if floor != floor else max(seeds_term, floor)
    return float(d.mean() - half), float(d.mean() + half), float(detectable)


def summary(agg: pd.DataFrame, rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per variant: mean super-/base-net accuracy (highest/lowest-MACs configuration it was evaluated at),
    mean over its configurations, and the final residual ratios when logged (DVC metrics)."""
    out: dict[str, dict[str, float]] = {}
    for variant, a in agg.groupby("variant", sort=False):
        a = a.sort_values("macs")
        entry = {
            "acc1_super": float(a.acc1_mean.iloc[-1]),
            "acc1_base": float(a.acc1_mean.iloc[0]),
            "acc1_mean_over_configs": float(a.acc1_mean.mean()),
            "configs": int(len(a)),
        }
        for col in ("ratio_mandatory", "ratio_skippable"):
            if col in rows:
                v = rows.loc[rows.variant == variant, col].dropna()
                if not v.empty:
                    entry[col] = float(v.mean())
        out[variant] = entry
    return out


def comparison_markdown(comparison: pd.DataFrame, agg: pd.DataFrame, spec: Any) -> str:
    """The comparison table: each difference with its confidence interval corrected with Holm over the table's
    comparisons, "better"/"worse" only where that interval excludes zero ("inconclusive" otherwise, with the smallest
    difference the study could detect), and the probability that the reference beats the baseline. ``spec``: the
    study's :class:`~adaskip.ablation.spec.StudySpec` (its name, seeds, variants and reference)."""
    lines = [f"# Study `{spec.name}`: {len(spec.variants)} variants x {len(spec.seeds)} seeds", ""]
    if comparison.empty:
        lines.append("No individual baseline shares a configuration with the reference variant: nothing to compare.")
    else:
        lines += _comparison_head(comparison, spec.reference)
        lines += [_comparison_row(r) for r in comparison.itertuples(index=False)]
    lines += [
        "",
        "## Every variant (test top-1 %, mean +- std over seeds)",
        "",
        "| variant | config | MACs | top-1 | seeds |",
        "|---|---|---|---|---|",
    ]
    for r in agg.itertuples(index=False):
        lines.append(
            f"| {r.variant} | {r.skip} | {r.macs / 1e6:.2f} M | {r.acc1_mean:.2f} +- {r.acc1_std:.2f} | {r.seeds} |"
        )
    return "\n".join(lines) + "\n"


def _comparison_head(comparison: pd.DataFrame, reference: str) -> list[str]:
    """What the comparison table's columns mean, the family Holm corrects over, the test set; the table's header."""
    sizes = sorted({int(n) for n in comparison.test_images.dropna()})
    size = (
        f"{' / '.join(map(str, sizes))} images per seed, the same images for every seed"
        if sizes
        else "size not recorded in the results"
    )
    family = int(comparison.family.iloc[0])
    return [
        f"`{reference}` (one adaptive-depth network) against individually trained networks of the same "
        "depth, test top-1 %, mean +- std over seeds. delta: "
        f"`{reference}` minus individual in percentage points, paired by seed, mean [confidence interval "
        f"over seeds]. The family: the {family} comparison{'s' if family != 1 else ''} of this table with two or "
        "more seeds, corrected with Holm's step-down (family-wise error 5 %); each interval is at the level Holm "
        "tested its comparison at, so it excludes zero exactly when the verdict is better or worse. detectable: "
        "the smallest delta this study finds with 80 % power (the larger of the seed-to-seed and the test-set "
        "limit; `adaskip.ablation.stats.paired_stats`). P(better): the probability that a run of "
        f"`{reference}` beats a run of the baseline (pairs of seeds, ties half) [95 % stratified bootstrap, "
        f"from {power.MIN_BOOTSTRAP_SEEDS} seeds]. `adaskip study plan` says how many seeds a difference needs. "
        f"Test set: {size}.",
        "",
        "| config | MACs | baseline | " + reference + " | individual | delta (%p) [Holm CI] | detectable (%p) "
        f"| P(better) | verdict for {reference} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]


def _comparison_row(r: Any) -> str:
    """One comparison (a row of ``comparison``) as a table line."""
    ci = f" [{r.ci_holm_low:+.2f}, {r.ci_holm_high:+.2f}]" if r.seeds >= 2 else ""
    det = f"{r.detectable:.1f}" if r.detectable == r.detectable else "n/a"
    pi = f"{r.p_improve:.2f}" + (
        f" [{r.p_improve_low:.2f}, {r.p_improve_high:.2f}]"
        if r.p_improve_low == r.p_improve_low
        else f" (no interval: < {power.MIN_BOOTSTRAP_SEEDS} seeds)"
    )
    return (
        f"| {r.skip} | {r.macs / 1e6:.2f} M | {r.baseline} | {r.adn_acc1_mean:.2f} +- {r.adn_acc1_std:.2f} | "
        f"{r.baseline_acc1_mean:.2f} +- {r.baseline_acc1_std:.2f} | {r.delta_acc1_mean:+.2f}{ci} | {det} | "
        f"{pi} | {verdict(r.ci_holm_low, r.ci_holm_high, r.detectable, r.seeds)} |"
    )


def verdict(ci_low: float, ci_high: float, detectable: float, seeds: int) -> str:
    """ "better" / "worse" (the reference against the baseline) only when the (Holm-corrected) interval excludes
    zero; otherwise "inconclusive", with the smallest difference the study could have detected."""
    if seeds < 2:
        return "inconclusive (one seed: no confidence interval)"
    if ci_low > 0:
        return "better"
    if ci_high < 0:
        return "worse"
    return f"inconclusive (detectable: {detectable:.1f} %p)"
