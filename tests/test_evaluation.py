"""adaskip.evaluation: shared-prefix grid, grid accuracy, complexity, Pareto front, trade-off AUC."""

from __future__ import annotations

import math
import time
from collections import Counter

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import adaskip
from adaskip.evaluation import (
    complexity_table,
    evaluate_grid,
    grid_logits,
    measure_latency,
    pareto_front,
    summarise,
    tradeoff_auc,
)
from helpers import merge

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Distinct random BN statistics/affines, so the two skip-aware norm sets differ and a wrong set
    (or a wrong skip flag) changes the logits."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))


def _model(name: str, num_classes: int = 10) -> adaskip.AdaptiveDepthNet:
    torch.manual_seed(0)
    model = adaskip.create_model(name, num_classes=num_classes)
    _randomise_norms(model)
    return model.eval()


@pytest.fixture(scope="module")
def resnet18():
    return _model("resnet18")


@pytest.fixture(scope="module")
def mobilenet():
    return _model("mobilenetv2_100")


def _count_stage_passes(model, monkeypatch) -> Counter:
    calls: Counter = Counter()
    original = model.forward_stage

    def counting(index, h, skipped):
        calls[index] += 1
        return original(index, h, skipped)

    def counting_stem(x, _orig=model.forward_stem):
        calls["stem"] += 1
        return _orig(x)

    monkeypatch.setattr(model, "forward_stage", counting)
    monkeypatch.setattr(model, "forward_stem", counting_stem)
    return calls


@pytest.mark.parametrize("fixture", ["resnet18", "mobilenet"])
def test_grid_logits_equal_plain_forwards(fixture, request):
    model = request.getfixturevalue(fixture)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        grid = grid_logits(model, x)
        assert list(grid) == [str(c) for c in model.configs()]
        assert len(grid) == 2**model.num_stages
        for cfg in model.configs():
            torch.testing.assert_close(grid[str(cfg)], model(x, skip=cfg), rtol=0, atol=0)
        # the grid really differs between configurations (so the equality above can fail)
        assert not torch.allclose(grid["F" * model.num_stages], grid["T" * model.num_stages])


def test_grid_logits_prefix_and_subset(resnet18):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sub = grid_logits(resnet18, x, prefix="t")
        assert list(sub) == [str(c) for c in resnet18.configs() if str(c).startswith("T")]
        for key, logits in sub.items():
            torch.testing.assert_close(logits, resnet18(x, skip=key))
        assert list(grid_logits(resnet18, x, prefix="FT")) == ["FTFF", "FTFT", "FTTF", "FTTT"]
        assert list(grid_logits(resnet18, x, prefix="TFTF")) == ["TFTF"]
        # explicit configs keep their order, drop duplicates, and are filtered by the prefix
        picked = grid_logits(resnet18, x, configs=["TTTT", "FFFF", "TTTT", "FTFT"])
        assert list(picked) == ["TTTT", "FFFF", "FTFT"]
        torch.testing.assert_close(picked["FTFT"], resnet18(x, skip="FTFT"))
        assert list(grid_logits(resnet18, x, configs=["TTTT", "FFFF"], prefix="F")) == ["FFFF"]
    with pytest.raises(ValueError, match="invalid"):
        grid_logits(resnet18, x, prefix="TX")
    with pytest.raises(ValueError, match="stages"):
        grid_logits(resnet18, x, prefix="TTTTT")


def test_grid_logits_counts_stage_passes(resnet18, mobilenet, monkeypatch):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for model in (resnet18, mobilenet):
            s = model.num_stages
            calls = _count_stage_passes(model, monkeypatch)
            grid_logits(model, x)
            assert calls["stem"] == 1
            assert sum(calls[i] for i in range(s)) == 2 ** (s + 1) - 2
            assert [calls[i] for i in range(s)] == [2 ** (i + 1) for i in range(s)]
            monkeypatch.undo()
        calls = _count_stage_passes(resnet18, monkeypatch)
        grid_logits(resnet18, x, prefix="T")  # 1 pass for the prefix, then the 3-stage subtree
        assert [calls[i] for i in range(4)] == [1, 2, 4, 8]
        calls.clear()
        grid_logits(resnet18, x, configs=["FFFF", "FFFT"])  # share the first three stages
        assert [calls[i] for i in range(4)] == [1, 1, 1, 2]


def test_evaluate_grid_matches_plain_forwards(resnet18):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = {str(c): resnet18(x, skip=c) for c in resnet18.configs()}
    # labels: the super-net's prediction for half the samples, random for the rest, so the
    # accuracies are far from 0 and differ between configurations
    y = torch.randint(0, 10, (20,), generator=g)
    y[:10] = ref["FFFF"][:10].argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 8 + 8 + 4: a partial last batch
    resnet18.train()  # evaluate_grid must evaluate in eval mode ...
    try:
        df = evaluate_grid(resnet18, loader, progress=False)
        assert resnet18.training  # ... and restore the caller's mode
    finally:
        resnet18.eval()
    assert list(df.columns[:5]) == ["skip", "acc1", "acc5", "loss", "n"]
    assert list(df["skip"]) == list(ref)
    for row in df.itertuples():
        logits = ref[row.skip]
        top5 = logits.topk(5, dim=1).indices
        assert row.n == 20
        assert row.acc1 == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
        assert row.acc5 == pytest.approx(100.0 * (top5 == y[:, None]).any(1).float().mean().item())
        assert row.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert df.set_index("skip").loc["FFFF", "acc1"] >= 50.0
    assert df["acc1"].nunique() > 1

    half = evaluate_grid(resnet18, loader, prefix="F", progress=False)
    pd.testing.assert_frame_equal(half, df[df["skip"].str.startswith("F")].reset_index(drop=True))


def test_pareto_front_hand_made():
    macs = [4, 3, 3, 2, 2, 1, 5]
    acc = [80, 78, 78, 70, 75, 60, 79]  # (3,78) tied twice; (2,70) dominated by (2,75); (5,79) by (4,80)
    assert pareto_front(macs, acc) == [True, True, True, False, True, True, False]
    assert pareto_front([1, 1], [50, 50]) == [True, True]
    assert pareto_front([1, 2], [50, 50]) == [True, False]  # same accuracy, more MACs
    assert pareto_front([], []) == []
    with pytest.raises(ValueError):
        pareto_front([1, 2], [1])


def test_tradeoff_auc_hand_made():
    # c = (0.25, 0.5, 1): 0 on [0, .25), 50 on [.25, .5), 60 on [.5, 1) -> 12.5 + 30
    assert tradeoff_auc([1, 2, 4], [50, 60, 70]) == pytest.approx(42.5)
    assert tradeoff_auc([4, 2, 1], [70, 60, 50]) == pytest.approx(42.5)  # order-free
    # a dominated config (more MACs, less accuracy) does not lower the staircase
    assert tradeoff_auc([1, 2, 3, 4], [50, 60, 55, 70]) == pytest.approx(42.5)
    # explicit macs_max: c = (0.125, 0.25, 0.5), last step 70 * 0.5
    assert tradeoff_auc([1, 2, 4], [50, 60, 70], macs_max=8) == pytest.approx(0.125 * 50 + 0.25 * 60 + 0.5 * 70)
    # configurations beyond macs_max are ignored
    assert tradeoff_auc([1, 2, 4], [50, 60, 99], macs_max=2) == pytest.approx(0.5 * 50)
    # equal costs: the better one counts
    assert tradeoff_auc([2, 2, 4], [10, 60, 70]) == pytest.approx(0.5 * 60)
    assert tradeoff_auc([4], [70]) == 0.0
    with pytest.raises(ValueError):
        tradeoff_auc([], [])


def test_tradeoff_auc_monotone():
    macs, acc = [1.0, 2.0, 3.0, 4.0], [50.0, 60.0, 65.0, 70.0]
    base = tradeoff_auc(macs, acc)
    for i in range(3):  # any (non-super-net) config more accurate -> larger
        better = list(acc)
        better[i] += 1.0
        assert tradeoff_auc(macs, better) > base
    worse = [a - 1.0 for a in acc]
    assert tradeoff_auc(macs, worse) < base
    cheaper = [0.5, 2.0, 3.0, 4.0]  # a cheaper config at the same accuracy -> larger
    assert tradeoff_auc(cheaper, acc) > base
    assert tradeoff_auc(macs, acc, macs_max=4.0) == pytest.approx(base)


def test_complexity_table_and_summary(resnet18):
    table = complexity_table(resnet18, input_size=(3, 32, 32))
    assert list(table.columns) == ["skip", "macs", "params", "skipped_stages"]
    assert len(table) == 16
    by = table.set_index("skip")
    assert by.loc["FFFF", "macs"] == adaskip.count_macs(resnet18, "FFFF", (3, 32, 32))
    assert by.loc["TTFF", "skipped_stages"] == 2
    for skip in by.index:  # adding a T flag strictly lowers MACs and params
        for i, flag in enumerate(skip):
            if flag == "F":
                more = skip[:i] + "T" + skip[i + 1 :]
                assert by.loc[more, "macs"] < by.loc[skip, "macs"]
                assert by.loc[more, "params"] < by.loc[skip, "params"]
    assert by["macs"].idxmax() == "FFFF" and by["macs"].idxmin() == "TTTT"

    grid = pd.DataFrame(
        {
            "skip": list(by.index),
            "acc1": [90.0 - 2 * s for s in by["skipped_stages"]],
            "acc5": 99.0,
            "loss": 0.1,
            "n": 10,
            "latency_ms": 1.0,
        }
    )
    grid.loc[grid["skip"] == "TFFF", "acc1"] = 95.0  # a cheaper config beats the super-net
    summary = summarise(grid, table)
    for col in ("skip", "macs", "params", "acc1", "acc5", "latency_ms", "pareto"):
        assert col in summary.columns
    assert summary["macs"].is_monotonic_decreasing
    pareto = dict(zip(summary["skip"], summary["pareto"]))
    assert not pareto["FFFF"] and pareto["TFFF"] and pareto["TTTT"]
    assert summary["pareto"].dtype == bool
    assert pareto == dict(zip(summary["skip"], pareto_front(summary["macs"], summary["acc1"])))


def test_measure_latency(resnet18):
    ms = measure_latency(resnet18, "TTTT", (3, 32, 32), batch_size=2, warmup=1, reps=3)
    assert isinstance(ms, float) and ms > 0 and math.isfinite(ms)
    with pytest.raises(ValueError):
        measure_latency(resnet18, "TTTT", (3, 32, 32), reps=0)


@pytest.mark.ray
def test_grid_on_gpus_the_cluster_lacks_fails_at_once(ray_cluster, tiny_raw, tmp_path):
    """evaluate.use_gpu on a cluster without GPUs: a clear error before any task is queued (the tasks would wait
    for a GPU forever), and nothing saved."""
    from adaskip.config import Params
    from adaskip.orchestration.storage import Storage
    from adaskip.orchestration.grid import EvaluationError, evaluate_parallel

    params = Params.model_validate(merge(tiny_raw, {"evaluate": {"use_gpu": True}}))
    t = time.time()
    with pytest.raises(EvaluationError, match="evaluate.use_gpu is true but the Ray cluster has no GPU"):
        evaluate_parallel({"spec": {"split": [1, 1, 1, 1]}, "state_dict": {}}, params, Storage(str(tmp_path)))
    assert time.time() - t < 10 and not list(tmp_path.iterdir())
