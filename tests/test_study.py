"""Ablation studies: the spec, the aggregation (mean/std over seeds, ADN vs baseline joined per configuration),
the BN re-estimation switch, the residual-ratio diagnostics, and the compare stage on real files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from adaskip.config import ConfigError, Params
from adaskip.models import create_model
from helpers import ROOT, run_stage

from adaskip.ablation import spec as study, stats


def _rows() -> pd.DataFrame:
    """Two seeds of an adaptive-depth network over a 2-stage grid and two individually trained baselines."""
    r = []
    for seed, (ff, ft, tf, tt) in ((0, (90, 88, 86, 84)), (1, (92, 86, 88, 80))):
        r += [
            {"variant": "adn", "seed": seed, "skip": s, "macs": m, "acc1": a, "acc5": 99.0, "baseline": None}
            for s, m, a in (("FF", 40, ff), ("FT", 30, ft), ("TF", 30, tf), ("TT", 20, tt))
        ]
    r += [
        {"variant": "ind_full", "seed": 0, "skip": "FF", "macs": 40, "acc1": 91.0, "acc5": 99.0, "baseline": "FF"},
        {"variant": "ind_full", "seed": 1, "skip": "FF", "macs": 40, "acc1": 89.0, "acc5": 99.0, "baseline": "FF"},
        {"variant": "ind_base", "seed": 0, "skip": "TT", "macs": 20, "acc1": 80.0, "acc5": 99.0, "baseline": "TT"},
        {"variant": "ind_base", "seed": 2, "skip": "TT", "macs": 20, "acc1": 70.0, "acc5": 99.0, "baseline": "TT"},
    ]
    return pd.DataFrame(r)


def test_aggregate_mean_and_std_over_seeds():
    agg = stats.aggregate(_rows()).set_index(["variant", "skip"])
    assert agg.loc[("adn", "FF"), "acc1_mean"] == 91.0
    assert agg.loc[("adn", "FF"), "acc1_std"] == pytest.approx(2**0.5)  # sample std of 90, 92
    assert agg.loc[("adn", "TT"), "acc1_mean"] == 82.0 and agg.loc[("adn", "TT"), "seeds"] == 2
    assert agg.loc[("ind_base", "TT"), "acc1_mean"] == 75.0
    assert len(agg) == 4 + 1 + 1


def test_compare_joins_per_configuration_paired_by_seed():
    cmp = stats.compare(_rows(), "adn").set_index("skip")
    assert list(cmp.index) == ["FF", "TT"]  # only configurations a baseline was trained for, by MACs
    ff = cmp.loc["FF"]
    assert ff.baseline == "ind_full" and ff.seeds == 2
    assert ff.delta_acc1_mean == pytest.approx(((90 - 91) + (92 - 89)) / 2)
    assert ff.delta_acc1_std == pytest.approx(pd.Series([-1.0, 3.0]).std())
    assert ff.ci_low == pytest.approx(1 - 12.7062 * 2, abs=1e-3) and ff.ci_high == pytest.approx(
        1 + 12.7062 * 2, abs=1e-3
    )
    tt = cmp.loc["TT"]  # the baseline has seeds 0 and 2, ADN 0 and 1: only seed 0 pairs
    assert tt.seeds == 1 and tt.delta_acc1_mean == pytest.approx(84 - 80) and tt.delta_acc1_std == 0.0
    assert tt.ci_low != tt.ci_low and tt.detectable != tt.detectable  # one seed, no `n`: undefined (NaN)


def test_markdown_does_not_decide_the_claim():
    spec = study.StudySpec(name="s", seeds=[0, 1], variants={"adn": {}, "ind_full": {"baseline": "super"}})
    text = stats.comparison_markdown(stats.compare(_rows(), "adn"), stats.aggregate(_rows()), spec)
    # FF: deltas -1, +3 over 2 seeds: mean 1, t(0.975, 1) = 12.706, sd/sqrt(2) = 2: CI 1 +- 25.41
    assert "| FF |" in text and "| +1.00 [-24.41, +26.41] |" in text and "| inconclusive (detectable:" in text
    assert "inconclusive (one seed: no confidence interval)" in text  # TT pairs on one seed only
    assert "size not recorded" in text  # these rows have no `n` column
    assert "| better |" not in text and "| worse |" not in text


def _paired(deltas, n=10000, acc=90.0):
    """Rows of a reference and a baseline at one configuration whose per-seed differences are ``deltas``."""
    r = []
    for seed, d in enumerate(deltas):
        r += [
            {
                "variant": "adn",
                "seed": seed,
                "skip": "FF",
                "macs": 40,
                "acc1": acc + d / 2,
                "acc5": 99.0,
                "n": n,
                "baseline": None,
            },
            {
                "variant": "ind",
                "seed": seed,
                "skip": "FF",
                "macs": 40,
                "acc1": acc - d / 2,
                "acc5": 99.0,
                "n": n,
                "baseline": "FF",
            },
        ]
    return pd.DataFrame(r)


def test_a_clear_difference_is_called_and_a_noisy_one_is_not():
    spec = study.StudySpec(name="s", seeds=[0, 1, 2, 3, 4], variants={"adn": {}, "ind": {"baseline": "super"}})
    clear = stats.compare(_paired([3.0, 3.2, 2.8, 3.1, 2.9]), "adn")
    assert clear.loc[0, "ci_low"] > 0 and clear.loc[0, "test_images"] == 10000
    text = stats.comparison_markdown(clear, stats.aggregate(_paired([3.0] * 5)), spec)
    assert "| better |" in text and "Test set: 10000 images per seed" in text
    worse = stats.compare(_paired([-3.0, -3.2, -2.8, -3.1, -2.9]), "adn")
    assert stats.verdict(worse.loc[0, "ci_low"], worse.loc[0, "ci_high"], worse.loc[0, "detectable"], 5) == "worse"
    noisy = stats.compare(_paired([-4.0, 5.0, -3.0, 6.0, 1.0]), "adn").iloc[0]
    assert noisy.ci_low < 0 < noisy.ci_high
    call = stats.verdict(noisy.ci_low, noisy.ci_high, noisy.detectable, noisy.seeds)
    assert call == f"inconclusive (detectable: {noisy.detectable:.1f} %p)" and noisy.detectable > abs(
        noisy.delta_acc1_mean
    )
    assert f"| {call} |" in stats.comparison_markdown(
        stats.compare(_paired([-4.0, 5.0, -3.0, 6.0, 1.0]), "adn"), stats.aggregate(_paired([1.0])), spec
    )


def test_confidence_interval_and_detectable_difference_by_hand():
    # deltas 1, 2, 3: mean 2, sd 1, k 3; t(0.975, 2) = 4.302653, t(0.80, 2) = 1.060660
    lo, hi, det = stats.paired_stats([1.0, 2.0, 3.0])
    assert (lo, hi) == (pytest.approx(2 - 4.302653 / 3**0.5, abs=1e-5), pytest.approx(2 + 4.302653 / 3**0.5, abs=1e-5))
    assert det == pytest.approx((4.302653 + 1.060660) / 3**0.5, abs=1e-5)  # 3.0965 %p: seed spread dominates
    # 100 test images at 90 %: (1.959964 + 0.841621) * sqrt(2 * 0.9 * 0.1 / 100) * 100 = 11.886 %p > 3.10
    assert stats.paired_stats([1.0, 2.0, 3.0], 100, 90.0)[2] == pytest.approx(2.801585 * 0.0018**0.5 * 100, abs=1e-4)
    assert stats.paired_stats([1.0, 2.0, 3.0], 100, 90.0)[2] == pytest.approx(11.8860, abs=1e-3)
    lo, hi, det = stats.paired_stats([2.5], 100, 90.0)  # one seed: no interval, only the test-set floor
    assert lo != lo and hi != hi and det == pytest.approx(11.8860, abs=1e-3)


def test_summary_per_variant():
    s = stats.summary(stats.aggregate(_rows()), _rows())
    assert s["adn"]["acc1_super"] == 91.0 and s["adn"]["acc1_base"] == 82.0 and s["adn"]["configs"] == 4
    assert s["ind_full"]["configs"] == 1


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"name": "s", "seeds": [0, 0], "variants": {"adn": {}}}, "seeds must be distinct"),
        ({"name": "s", "seeds": [0], "variants": {"x": {}}}, "reference 'adn' is not one of"),
        ({"name": "s", "seeds": [0], "variants": {"adn": {"baseline": "super"}}}, "must be an adaptive-depth variant"),
        ({"name": "s", "seeds": [0], "variants": {"adn": {}, "b": {"baseline": "TXF"}}}, "baseline must be"),
        ({"name": "s", "seeds": [0], "variants": {"adn": {}, "b": {"baselin": "super"}}}, "unknown key"),
        ({"name": "s", "seeds": [], "variants": {"adn": {}}}, "seeds"),
        ({"name": "s", "seeds": [0], "variants": {"adn": {}, "a@b": {}}}, "variant names may hold"),
        ({"name": "s", "seeds": [0], "variants": {"adn": {}, "kd": {"teacher": "super"}}}, "teacher needs baseline"),
        (
            {"name": "s", "seeds": [0], "variants": {"adn": {}, "kd": {"baseline": "base", "teacher": "FX"}}},
            "teacher must be",
        ),
    ],
)
def test_study_file_errors_name_the_problem(tmp_path, raw, match):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=match):
        study.load_study(path)


def test_cells_validate_each_variant(tiny_params):
    spec = study.StudySpec(
        name="s",
        seeds=[3, 4],
        epochs=1,
        variants={
            "adn": {},
            "no_sd": {"overrides": {"train": {"self_distillation": False}}},
            "ind_base": {"baseline": "base"},
        },
    )
    cells = study.cells(spec, tiny_params)
    assert [c.key for c in cells] == [
        "adn-seed3",
        "adn-seed4",
        "no_sd-seed3",
        "no_sd-seed4",
        "ind_base-seed3",
        "ind_base-seed4",
    ]
    assert all(c.params.train.epochs == 1 for c in cells) and cells[1].params.train.seed == 4
    assert cells[2].params.train.self_distillation is False and cells[0].params.train.self_distillation is True
    assert cells[4].baseline == "TTTT" and cells[0].baseline is None
    assert [c.key for c in study.cells(spec, tiny_params, variants=["no_sd"])] == ["no_sd-seed3", "no_sd-seed4"]
    kd = spec.model_copy(update={"variants": {"kd": study.Variant(baseline="base", teacher="super")}})
    (cell, _) = study.cells(kd, tiny_params)
    assert (cell.baseline, cell.teacher) == ("TTTT", "FFFF")
    with pytest.raises(ConfigError, match=r"no variant \['nope'\] in study 's'"):
        study.cells(spec, tiny_params, variants=["nope"])
    bad = spec.model_copy(update={"variants": {"adn": study.Variant(overrides={"train": {"alpha": 3}})}})
    with pytest.raises(ConfigError, match="study variant 'adn'.*train.alpha"):
        study.cells(bad, tiny_params)
    wrong = spec.model_copy(update={"variants": {**spec.variants, "b": study.Variant(baseline="TT")}})
    with pytest.raises(ConfigError, match="2 flags but the model has 4 stages"):
        study.cells(wrong, tiny_params)


def _study_cells(tiny_params, overrides=None, **variants):
    spec = study.StudySpec(
        name="s", seeds=[0, 1], epochs=1, overrides=overrides or {}, variants={"adn": {}, **variants}
    )
    return study.cells(spec, tiny_params)


CPU2 = {"a": {"CPU": 2.0, "GPU": 0.0}}


def test_plan_fits_cells_by_the_resources_each_asks(tiny_params):
    """How many cells run at once follows what each cell's worker group asks, on the nodes as they are: 1-CPU
    workers, two hosts of 2 CPUs; 2-worker cells; GPUs."""
    from adaskip.orchestration.cells import plan_cells

    one = _study_cells(tiny_params, {"train": {"workers": 1, "cpus_per_worker": 1}}, ind={"baseline": "super"})
    plan = plan_cells(one, CPU2)
    assert (plan.cells, plan.at_once, plan.waves) == (4, 2, 2)
    assert (
        plan.line()
        == "plan: 4 cells, each 1 worker x 1 CPU; the cluster (1 node(s), 2 CPUs, 0 GPUs) runs 2 at once, 2 waves"
    )
    two_hosts = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}}
    ddp = _study_cells(tiny_params, {"train": {"workers": 2, "cpus_per_worker": 0.9}})
    assert (plan_cells(ddp, two_hosts).at_once, plan_cells(ddp, CPU2).at_once) == (2, 1)
    assert plan_cells(ddp, {"a": {"CPU": 1.0}, "b": {"CPU": 1.0}}).at_once == 1  # a group may span both hosts
    gpus = _study_cells(tiny_params, {"train": {"workers": 8, "use_gpu": True}})
    eight = {f"n{i}": {"CPU": 16.0, "GPU": 8.0} for i in range(3)}
    assert (plan_cells(gpus, eight).at_once, plan_cells(gpus, eight).waves) == (2, 1)
    assert "each 8 workers x 1 GPU" in plan_cells(gpus, eight).line()


@pytest.mark.parametrize(
    "overrides, nodes, match",
    [
        (
            {"train": {"workers": 8, "use_gpu": True}},
            {"a": {"CPU": 8.0, "GPU": 4.0}},
            r"study variant 'adn': a cell asks 8 workers x 1 GPU \(train.workers, train.use_gpu\) "
            r"but the Ray cluster has "
            r"8 CPUs and 4 GPUs on 1 node\(s\), so it could never start",
        ),
        ({"train": {"use_gpu": True}}, CPU2, r"train.use_gpu is true but the Ray cluster has no GPU"),
        ({"evaluate": {"use_gpu": True}}, CPU2, r"evaluate.use_gpu is true but the Ray cluster has no GPU"),
        (
            {"train": {"workers": 1, "cpus_per_worker": 3}},
            {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}},
            r"1 worker x 3 CPU \(train.workers, train.cpus_per_worker\).*lower train.workers or train.cpus_per_worker",
        ),
    ],
)
def test_plan_refuses_a_cell_that_can_never_run(tiny_params, overrides, nodes, match):
    from adaskip.orchestration.cells import plan_cells

    with pytest.raises(ConfigError, match=match):
        plan_cells(_study_cells(tiny_params, overrides), nodes)


def test_study_overrides_apply_to_every_cell_before_its_variant(tiny_params):
    every = _study_cells(
        tiny_params, {"train": {"workers": 1, "alpha": 0.7}}, mine={"overrides": {"train": {"alpha": 0.9}}}
    )
    assert {c.params.train.workers for c in every} == {1}
    assert [c.params.train.alpha for c in every] == [0.7, 0.7, 0.9, 0.9]
    from pydantic import ValidationError

    with pytest.raises(
        ValidationError, match="cpus_per_cell is gone: a cell is a Ray Train run that asks train.workers"
    ):
        study.StudySpec.model_validate({"name": "s", "seeds": [0], "cpus_per_cell": 1, "variants": {"adn": {}}})


def test_cell_hash_follows_what_a_cell_trains_with(tiny_params):
    """Moving the storage, the tracking store or the sweep's settings keeps every finished cell; a training knob
    or another seed makes a new cell."""
    from adaskip.ablation.cache import cell_hash

    spec = study.StudySpec(name="s", seeds=[0], epochs=1, variants={"adn": {}})
    [cell] = study.cells(spec, tiny_params)

    def changed(**sections) -> str:
        params = cell.params.model_copy(
            update={k: getattr(cell.params, k).model_copy(update=v) for k, v in sections.items()}
        )
        return cell_hash(dataclasses.replace(cell, params=params))

    same = cell_hash(cell)
    assert (
        changed(
            cluster={"storage": "/nfs/x"},
            mlflow={"tracking_uri": "http://h:5000"},
            tune={"num_samples": 9, "enabled": False},
        )
        == same
    )
    assert changed(train={"placement": "spread", "max_failures": 5}) == same  # where and how often it may restart
    assert changed(train={"alpha": 0.7}) != same and changed(train={"seed": 5}) != same
    assert changed(train={"workers": 1}) != same  # another batch per worker: other results


def test_run_ahead_picks_the_cells_later_stages_need(tiny_params, tmp_path):
    """The first variant stage of a study also starts the cells that the other variants' results files lack (by
    cell hash): a missing file, or one holding other cells; a file written before hashes were recorded is left to
    DVC."""
    from adaskip.ablation.cache import cell_hash, run_ahead

    spec = study.StudySpec(
        name="s",
        seeds=[0, 1],
        epochs=1,
        reference="current",
        variants={
            "current": {},
            "missing": {"baseline": "super"},
            "changed": {"overrides": {"train": {"alpha": 0.7}}},
            "legacy": {"baseline": "base"},
        },
    )
    every = study.cells(spec, tiny_params)
    files = {v: tmp_path / f"{v}.csv" for v in spec.variants}
    rows = lambda variant, hashes: pd.DataFrame({"variant": variant, "skip": "FFFF", "cell_hash": hashes})  # noqa: E731
    rows("current", [cell_hash(c) for c in every if c.variant == "current"]).to_csv(files["current"], index=False)
    rows("changed", ["0123456789", "abcdefabcd"]).to_csv(files["changed"], index=False)  # an earlier alpha
    rows("legacy", ["x", "y"]).drop(columns="cell_hash").to_csv(files["legacy"], index=False)
    ahead = run_ahead(every, files)
    assert [c.key for c in ahead] == ["missing-seed0", "missing-seed1", "changed-seed0", "changed-seed1"]


def test_recalibrate_bn_switch_changes_intermediate_configs_only():
    from adaskip.evaluation import evaluate_grid, recalibrate_bn, recalibrated_grid

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, channels=[8, 8, 16, 16])
    model.train()
    with torch.no_grad():  # give the running statistics something to forget
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 3 + 1)
    model.eval()
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))) for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = recalibrate_bn(model, data, "TFTF", batches=2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    changed = [k for k, v in copy.state_dict().items() if k.endswith("running_mean") and not torch.equal(v, before[k])]
    assert changed
    plain = evaluate_grid(model, data, progress=False).set_index("skip")
    recal = recalibrated_grid(model, data, data, batches=2).set_index("skip")
    assert list(recal.index) == list(plain.index)
    pd.testing.assert_series_equal(recal.loss[["FFFF", "TTTT"]], plain.loss[["FFFF", "TTTT"]])
    assert not recal.loss.drop(["FFFF", "TTTT"]).equals(plain.loss.drop(["FFFF", "TTTT"]))


def test_residual_ratios_measure_what_each_block_changes():
    from adaskip.models.diagnostics import ratio_summary, residual_ratios

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, num_stages=2)
    x = torch.randn(2, 3, 32, 32)
    ratios = residual_ratios(model, x)
    (m, s), _ = model.blocks_per_stage
    assert len(ratios) == sum(a + b for a, b in model.blocks_per_stage)
    assert all(v > 0 for v in ratios.values())
    block = model.skippable_blocks(0)[0]
    with torch.no_grad():  # a block whose residual branches output zero changes nothing
        (
            block.attn.proj.weight.zero_(),
            block.attn.proj.bias.zero_(),
            block.mlp.fc2.weight.zero_(),
            block.mlp.fc2.bias.zero_(),
        )
    assert residual_ratios(model, x)["s0.s0"] == pytest.approx(0.0, abs=1e-7)
    base_only = residual_ratios(model, x, "TT")
    assert base_only and not any(".s" in k for k in base_only)  # skipped blocks do not run
    assert set(ratio_summary(base_only)) == {"ratio_mandatory"}


@pytest.mark.subprocess
def test_compare_stage_writes_every_output(tmp_path, monkeypatch):
    """The compare stage on real per-variant cells files: tables, plot, summary metrics; a variant without
    results and a bad study file exit 2, naming the problem."""
    res = tmp_path / "studies" / "s" / "results"
    (res / "cells").mkdir(parents=True)
    for variant, rows in _rows().groupby("variant"):
        rows.to_csv(res / "cells" / f"{variant}.csv", index=False)
    (tmp_path / "studies" / "s" / "study.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "seeds": [0, 1],
                "variants": {"adn": {}, "ind_full": {"baseline": "super"}, "ind_base": {"baseline": "base"}},
            }
        )
    )
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.chdir(tmp_path)
    compared = run_stage("compare", "--study", "studies/s/study.yaml")  # in process: the stage starts no Ray
    assert compared.summary() == "3 variants x 2 seeds against 'adn' -> studies/s/results/comparison.md"
    assert sorted(compared.comparison.baseline) == ["ind_base", "ind_full"]
    assert sorted(p.name for p in res.iterdir()) == [
        "cells",
        "comparison.csv",
        "comparison.md",
        "curves.csv",
        "summary.json",
        "tradeoff.png",
    ]
    summary = json.loads((res / "summary.json").read_text())
    assert summary == json.loads(json.dumps(compared.summary_metrics))
    assert summary["adn"]["acc1_super"] == 91.0 and summary["ind_base"]["acc1_base"] == 75.0
    assert (res / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    (res / "cells" / "ind_base.csv").unlink()
    with pytest.raises(ConfigError, match="no results for variant 'ind_base'"):
        run_stage("compare", "--study", "studies/s/study.yaml")
    assert not (res / "summary.json").exists()
    (tmp_path / "studies" / "s" / "study.yaml").write_text("name: s\nseeds: [0]\nvariants: {adn: {bogus: 1}}\n")
    r = subprocess.run(  # as DVC runs it: one line, exit 2
        [sys.executable, str(ROOT / "pipelines" / "compare.py"), "--study", "studies/s/study.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "variants.adn.bogus: unknown key" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_shipped_study_is_valid(tiny_params):
    spec = study.load_study(ROOT / "studies" / "ablation" / "study.yaml")
    assert {"adn", "no_self_distillation", "no_skip_aware_norm", "individual_full", "individual_base"} <= set(
        spec.variants
    )
    assert len(spec.seeds) >= 3
    assert spec.variants["kd_individual_base"].teacher == "super"
    assert len(study.cells(spec, Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text())))) == 18


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def test_shipped_study_variants_differ_from_the_reference_only_where_they_say():
    """Same recipe for every variant: a cell's effective params (label smoothing, epochs, optimizer, ... included)
    differ from the reference's at the same seed only in the keys the variant's overrides name; the baselines
    (with or without a teacher) override nothing, so their params are the reference's."""
    spec = study.load_study(ROOT / "studies" / "ablation" / "study.yaml")
    base = Params.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text()))
    every = study.cells(spec, base)
    ref = {c.seed: _flat(c.params.model_dump(mode="json")) for c in every if c.variant == spec.reference}
    assert "train.label_smoothing" in ref[spec.seeds[0]]
    for cell in every:
        named = set(_flat(spec.variants[cell.variant].overrides))
        mine = _flat(cell.params.model_dump(mode="json"))
        differ = {k for k in mine.keys() | ref[cell.seed].keys() if mine.get(k) != ref[cell.seed].get(k)}
        assert all(any(k == n or k.startswith(n + ".") for n in named) for k in differ), (cell.key, differ - named)
        if spec.variants[cell.variant].baseline is not None:
            assert not named and not differ, cell.key
        assert cell.params.train.seed == cell.seed and cell.params.train.epochs == (spec.epochs or base.train.epochs)


def test_shipped_study_pipeline_has_a_stage_per_variant():
    """DVC's matrix stage expands to one stage per variant of study.yaml, each tracking its own variant's params."""
    from dvc.repo import Repo

    spec = study.load_study(ROOT / "studies" / "ablation" / "study.yaml")
    with Repo(str(ROOT)) as repo:
        stages = {s.name: s for s in repo.index.stages if s.path.endswith("studies/ablation/dvc.yaml")}
    assert set(stages) == {f"cells@{v}" for v in spec.variants} | {"compare"}
    params = {name: {k for d in s.deps if hasattr(d, "params") for k in d.params} for name, s in stages.items()}
    assert "variants.adn" in params["cells@adn"] and "variants.individual_full" not in params["cells@adn"]
    assert {str(o) for o in stages["cells@adn"].outs} == {"studies/ablation/results/cells/adn.csv"}
