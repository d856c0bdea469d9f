"""Latency tables of the evaluation grid (p50/p90 per batch size and thread count, device, long form) and
`adaskip select`: the best sub-network within a budget, its exit codes, and chaining into the export."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from adaskip.build import build_model
from adaskip.config import Params
from adaskip.evaluation import latency_long_table, latency_wide, summarise
from adaskip.evaluation.latency import LONG_COLUMNS, latency_long
from adaskip.select import Budget, SelectError, choose

from helpers import ROOT, TINY, merge

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

BATCHES = [1, 4]


def _cli(*argv: str) -> int:
    from adaskip.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code


# ----------------------------------------------------------------------------- a real grid of a tiny model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Any]:
    """A random-weight tiny model saved as the train stage saves models/model.pt, its params and its grid as the
    evaluate stage's Ray task computes it (here in this process)."""
    from adaskip.data import load_subsets
    from adaskip.orchestration.grid import _evaluate_subtree
    from adaskip.training import save_atomic

    root = tmp_path_factory.mktemp("proj")
    raw = merge(
        yaml.safe_load((ROOT / "params.yaml").read_text()),
        merge(
            TINY,
            {
                "evaluate": {"latency_batch_sizes": BATCHES, "latency_reps": 3, "latency_warmup": 1},
                "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
                "cluster": {"storage": str(root / "store")},
            },
        ),
    )
    params = Params.model_validate(raw)
    size, num_classes = params.data.image_size, load_subsets(params.data).num_classes
    torch.manual_seed(0)
    net = build_model(params, num_classes=num_classes)
    model_file = {"spec": net.spec, "state_dict": net.state_dict()}
    save_atomic({**model_file, "metrics": {}, "image_size": size}, root / "models" / "model.pt")
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    part = _evaluate_subtree(model_file, params, "")
    cost = ["skip", "macs", "params", "skipped_stages"]
    grid = summarise(part.drop(columns=cost[1:]), part[cost])
    return {"root": root, "params": params, "net": net.eval(), "model_file": model_file, "grid": grid}


def test_grid_latency_columns(tiny):
    grid = tiny["grid"]
    assert len(grid) == 16 and grid.skip.is_unique
    assert set(grid.columns) >= {"skip", "macs", "params", "acc1", "acc5", "latency_ms", "pareto", "device", "threads"}
    for b in BATCHES:
        p50, p90 = grid[f"latency_p50_ms_b{b}"], grid[f"latency_p90_ms_b{b}"]
        assert (p50 > 0).all() and (p50 <= p90).all()
    assert not [c for c in grid.columns if c.startswith("latency_p") and "_t" in c]  # one thread setting: no suffix
    assert (grid.latency_ms == grid.latency_p50_ms_b1).all()  # the first batch size, per batch
    assert (grid.threads == 1).all() and grid.device.str.startswith("cpu:").all() and grid.device.nunique() == 1


def test_several_thread_counts_get_suffixes_and_long_form_round_trips(tiny):
    net = tiny["net"]
    long = latency_long_table(net, ["FFFF", "TTTT"], (3, 16, 16), batch_sizes=[2, 1], threads=[1, 2], warmup=0, reps=2)
    assert list(long.columns) == LONG_COLUMNS and len(long) == 2 * 2 * 2
    assert (long.p50_ms <= long.p90_ms).all() and torch.get_num_threads() == 1  # the setting is restored
    wide = latency_wide(long)
    assert {f"latency_{s}_ms_b{b}_t{t}" for s in ("p50", "p90") for b in (1, 2) for t in (1, 2)} <= set(wide.columns)
    assert (wide.latency_ms == wide.latency_p50_ms_b2_t1).all() and (wide.threads == 1).all()
    back = latency_long(wide).sort_values(["skip", "batch_size", "threads"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        back, long.sort_values(["skip", "batch_size", "threads"]).reset_index(drop=True), check_dtype=False
    )


def test_config_keys():
    from adaskip.config import ConfigError, parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    e = parse_params(raw).evaluate
    assert e.latency_batch_sizes == [1, 32] and e.latency_threads == [None] and e.task_cpus() == 1
    for bad in ({"latency_batch_size": 1}, {"latency_batch_sizes": [0]}, {"latency_threads": [2, 2]}):
        with pytest.raises(ConfigError, match="evaluate.latency_batch_size|evaluate.latency_threads"):
            parse_params(merge(raw, {"evaluate": bad}))
    two = parse_params(merge(raw, {"evaluate": {"latency_threads": [None, 2]}}))
    assert two.evaluate.task_cpus() == 2


@pytest.mark.ray
def test_evaluate_stage_writes_latency_tables_and_select_reads_its_run(ray_cluster, tiny, monkeypatch, capsys):
    """pipelines/evaluate.py on the session's local Ray: eval_grid.csv one row per skip, results/latency.csv the
    long form, the MLflow children carry the latency metrics; `select --run` reads the run's eval_grid.json."""
    from adaskip.tracking import Tracker

    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "pipelines" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(tiny["root"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stage.run(tiny["params"], argparse.Namespace())

    grid = pd.read_csv("results/eval_grid.csv", dtype={"skip": str})
    assert len(grid) == 16 and grid.skip.is_unique and "latency_p90_ms_b4" in grid
    long = pd.read_csv("results/latency.csv", dtype={"skip": str})
    assert list(long.columns) == LONG_COLUMNS and len(long) == 16 * len(BATCHES)
    assert sorted(long.batch_size.unique()) == BATCHES and (long.p50_ms <= long.p90_ms).all()
    merged = long[long.batch_size == 4].merge(grid, on="skip")
    assert (merged.p50_ms == merged.latency_p50_ms_b4).all()

    tracker = Tracker(tiny["params"].mlflow.tracking_uri, tiny["params"].mlflow.experiment)
    parent = tracker.find_run({"adaskip.stage": "evaluate"})
    children = tracker.children(parent)
    assert len(children) == 16
    for r in children:
        assert {"latency_ms", "latency_p50_ms_b1", "latency_p90_ms_b4", "threads"} <= set(r.data.metrics)
        assert r.data.tags["device"].startswith("cpu:")
    capsys.readouterr()

    assert _cli("select", "--run", parent, "--max-macs", "1e12") == 0
    line = capsys.readouterr().out.strip()
    keys = ["acc1", "latency_p50_ms_b1", "macs", "skip"]  # a cost cap: the most accurate of all, then the faster
    best = grid.sort_values(keys, ascending=[False, True, True, True]).iloc[0]
    assert line.startswith(f"{best.skip}: ")
    assert _cli("select", "--run", "0" * 32, "--min-acc", "1") == 2
    assert "cannot load its table" in capsys.readouterr().err


def test_select_export_writes_a_verified_file(tiny, tmp_path, monkeypatch, capsys):
    from adaskip.export import load_exported

    monkeypatch.chdir(tiny["root"])
    tiny["grid"].to_csv(tmp_path / "grid.csv", index=False)
    out = tmp_path / "chosen.pt"
    assert (
        _cli(
            "select",
            "--grid",
            str(tmp_path / "grid.csv"),
            "--max-latency-ms",
            "1e9",
            "--batch",
            "4",
            "--export",
            "torch",
            "--out",
            str(out),
        )
        == 0
    )
    chosen, exported = capsys.readouterr().out.strip().splitlines()
    skip = chosen.split(":")[0]
    assert "per batch of 4" in chosen and exported.startswith(f"exported {skip} (torch) -> {out}")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(out)(x), tiny["net"](x, skip=skip), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- the selection logic
def _grid() -> pd.DataFrame:
    """Hand-made: MACs fall and accuracy falls along the Pareto front; FFTT is dominated (more MACs than TTFF,
    less accurate) but the fastest of all; TTFF and FTTF tie on MACs and accuracy."""
    rows = [  # skip, macs, acc1, p50 b1, p50 b8
        ("FFFF", 400, 80.0, 4.0, 20.0),
        ("TFFF", 300, 79.0, 3.0, 15.0),
        ("TTFF", 200, 75.0, 2.0, 10.0),
        ("FTTF", 200, 75.0, 2.5, 11.0),
        ("TTTT", 100, 60.0, 1.0, 5.0),
        ("FFTT", 350, 70.0, 0.5, 2.0),
    ]
    df = pd.DataFrame(rows, columns=["skip", "macs", "acc1", "latency_p50_ms_b1", "latency_p50_ms_b8"])
    df = df.assign(
        acc5=99.0,
        params=1000,
        latency_ms=df.latency_p50_ms_b1,
        device="cpu:Test CPU",
        threads=1,
        latency_p90_ms_b1=df.latency_p50_ms_b1 * 1.1,
        latency_p90_ms_b8=df.latency_p50_ms_b8 * 1.1,
    )
    return summarise(df.drop(columns=["macs", "params"]), df[["skip", "macs", "params"]])


@pytest.mark.parametrize(
    "budget, expected",
    [
        (Budget(max_latency_ms=3.0), "TFFF"),
        (Budget(max_latency_ms=2.9), "TTFF"),  # ties with FTTF on accuracy and MACs: the faster
        (Budget(max_latency_ms=10.5, batch=8), "TTFF"),  # at batch 8 only TTFF of the tie fits
        (Budget(max_latency_ms=1.0), "FFTT"),  # off the MACs Pareto front, yet faster and more accurate than TTTT
        (Budget(max_macs=299), "TTFF"),
        (Budget(min_acc=76), "TFFF"),  # a floor alone: the fastest that meets it, not the most accurate
        (Budget(min_acc=76, prefer="accuracy"), "FFFF"),
        (Budget(min_acc=60, prefer="macs"), "TTTT"),
        (Budget(max_macs=350, min_acc=70, max_latency_ms=2.2, device="test"), "TTFF"),
    ],
)
def test_choose_answers_the_question_asked(budget, expected):
    grid = _grid()
    assert not grid.set_index("skip").pareto["FFTT"]
    choice = choose(grid, budget)
    assert choice.chosen is not None and choice.chosen["skip"] == expected


def _rule(rows: list[dict], latency, macs, acc, prefer, p50: str):
    """The documented rule, by brute force over every row: what fits every limit; a cost cap wants the most
    accurate (then the fastest), a floor alone the fastest (p50; no latency: fewest MACs), then the more accurate;
    ``prefer`` decides instead; then fewer MACs, then the skip string."""
    fits = [r for r in rows if latency is None or r[p50] <= latency]
    fits = [r for r in fits if (macs is None or r["macs"] <= macs) and (acc is None or r["acc1"] >= acc)]
    goal = prefer or ("accuracy" if latency is not None or macs is not None else "latency" if p50 else "macs")
    speed = (lambda r: r[p50]) if p50 else (lambda r: 0)
    key = {
        "accuracy": lambda r: (-r["acc1"], speed(r), r["macs"], r["skip"]),
        "latency": lambda r: (speed(r), -r["acc1"], r["macs"], r["skip"]),
        "macs": lambda r: (r["macs"], -r["acc1"], r["macs"], r["skip"]),
    }[goal]
    return min(fits, key=key)["skip"] if fits else None


@pytest.mark.parametrize("latency_columns", [True, False])
def test_served_and_selected_answers_equal_the_rule_by_brute_force(latency_columns, tmp_path, capsys):
    """Every kind of budget at several levels, alone and together, with and without ``prefer``: the answer of the
    serving menu (what ``mlflow models serve`` answers) and of ``adaskip select`` equal the rule computed here."""
    import itertools

    from adaskip.serving import GRID_COLUMNS, Menu, RequestError

    grid = _grid()
    if not latency_columns:
        grid = grid.drop(columns=[c for c in grid.columns if c.startswith("latency") or c in ("device", "threads")])
    p50 = "latency_p50_ms_b1" if latency_columns else ""
    rows = grid.to_dict("records")
    path = tmp_path / "grid.csv"
    grid.to_csv(path, index=False)
    # serving: the grid's accuracy and MACs with its own device's latency table (it always has one: see build_menu)
    kept = grid[[c for c in GRID_COLUMNS if c in grid.columns]]
    menu = Menu(4, kept, latency_long(grid), "FFFF") if latency_columns else None
    levels = {
        "latency": [None, 0.4, 1.0, 2.2, 3.0, 99.0] if latency_columns else [None],
        "macs": [None, 99, 150, 200, 350, 1000],
        "acc": [None, 60, 70, 75.5, 79, 95],
        "prefer": [None, "accuracy", "latency", "macs"] if latency_columns else [None, "accuracy", "macs"],
    }
    checked = 0
    for latency, macs, acc, prefer in itertools.product(*levels.values()):
        if latency is None and macs is None and acc is None:
            continue
        expected = _rule(rows, latency, macs, acc, prefer, p50)
        argv = [
            f"--{k}={v}"
            for k, v in (("max-latency-ms", latency), ("max-macs", macs), ("min-acc", acc))
            if v is not None
        ]
        argv += [f"--prefer={prefer}"] if prefer else []
        code = _cli("select", "--grid", str(path), *argv)
        line = capsys.readouterr().out.strip()
        assert (code == 0 and line.split(":")[0] == expected) or (code == 1 and expected is None), (
            argv,
            line,
            expected,
        )
        if menu is not None:
            asked = {"max_latency_ms": latency, "max_macs": macs, "min_acc": acc, "prefer": prefer}
            if expected is None:
                with pytest.raises(RequestError, match="no sub-network fits"):
                    menu.pick(asked)
            else:
                skip, figures = menu.pick(asked)
                row = grid.set_index("skip").loc[expected]
                assert skip == expected and figures["acc1"] == row.acc1 and figures["macs"] == row.macs
                assert figures["p50_ms"] == row.latency_p50_ms_b1 and figures["batch"] == 1
        checked += 1
    assert checked > 100


def test_select_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "grid.csv"
    _grid().to_csv(path, index=False)
    g = ("select", "--grid", str(path))
    assert _cli(*g, "--max-latency-ms", "3") == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("TFFF: top-1 79.00 %") and "p50 3 ms / p90 3.3 ms per batch of 1 on cpu:Test CPU" in line

    assert _cli(*g, "--max-latency-ms", "0.1", "--min-acc", "50") == 1
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("no sub-network fits latency <= 0.1 ms at batch 1, top-1 >= 50 %")
    assert "the cheapest is FFTT" in line and "p50 0.5 ms" in line  # off the MACs front, the fastest

    for argv, message in [
        ((), "no budget given"),
        (("--max-latency-ms", "-1"), "--max-latency-ms must be a number >= 0"),
        (("--max-macs", "-5"), "--max-macs must be a number >= 0"),
        (("--max-latency-ms", "1", "--device", "H100"), "'H100' is not one of the grid's devices: cpu:Test CPU"),
        (("--max-latency-ms", "1", "--batch", "32"), "the latency table has batch sizes 1, 8"),
        (("--min-acc", "50", "--export", "onnx"), "--export FORMAT and --out FILE go together"),
    ]:
        assert _cli(*g, *argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
    assert _cli("select", "--grid", str(tmp_path / "nope.csv"), "--min-acc", "1") == 2
    assert "no evaluation grid at" in capsys.readouterr().err

    gpu = _grid().assign(device="NVIDIA H100", latency_p50_ms_b1=lambda d: d.latency_p50_ms_b1 / 10)
    two = pd.concat([_grid(), gpu])
    two.to_csv(path, index=False)
    assert _cli(*g, "--max-latency-ms", "0.2") == 2
    assert "holds 2 devices: pass --device (one of cpu:Test CPU, NVIDIA H100)" in capsys.readouterr().err
    assert _cli(*g, "--max-latency-ms", "0.2", "--device", "h100") == 0
    assert capsys.readouterr().out.startswith("TTFF: ")  # FTTF, tied with it, takes 0.25 ms
    assert _cli(*g, "--min-acc", "76") == 0  # a floor alone, no device named of two: the fewest MACs that meet it
    assert capsys.readouterr().out.startswith("TFFF: ")


def test_help_has_an_example(capsys):
    assert _cli("select", "--help") == 0
    text = capsys.readouterr().out
    assert all(
        s in text
        for s in (
            "--max-latency-ms",
            "--batch",
            "--device",
            "--max-macs",
            "--min-acc",
            "--export",
            "--run",
            "examples:",
            "adaskip select --max-macs",
        )
    )
    with pytest.raises(SelectError):
        Budget().check()
