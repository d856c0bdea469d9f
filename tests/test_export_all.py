"""Tests of adaskip.export_all: every depth in one graph, the skip an input.

A small model of each family is trained one epoch on digits (both norm sets trained) and evaluated with the library's
grid on the test split; its all-depths ONNX graph must give every depth's top-1 of that grid and logits within the
export's tolerance of ``model(x, skip)``, hold one If node per stage and each weight once, and carry the grid and an
ONNX Runtime latency table. The pt2 program must run with torch alone, and examples/serve_all_depths.py (ONNX Runtime
and numpy alone) must answer budgets by the rule written out in this file.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adaskip.export import ExportError, ort_session
from adaskip.export_all import FILE_FORMAT, export_all_depths, read_metadata, skip_flags
from helpers import ROOT, free_port

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = ROOT / "examples" / "serve_all_depths.py"


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
    """(model file, the library's grid on the digits test split, the test split as one batch) of a model of
    ``request.param`` trained one epoch on digits at 16 px, written as the train stage writes models/model.pt."""
    import yaml

    from adaskip.config import Params
    from adaskip.data import load_subsets, make_loader
    from adaskip.evaluation.grid import evaluate_grid
    from adaskip.models.file import build_from_spec
    from adaskip.training import WorkerEnv, fit, save_atomic
    from helpers import TINY, merge

    raw = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    params = Params.model_validate({**raw, "model": {**raw["model"], "name": request.param}})
    final: dict = {}
    fit(params, WorkerEnv(report=lambda m, state: final.update(state or {})), epochs=1)
    path = tmp_path_factory.mktemp(request.param) / "model.pt"
    save_atomic({"spec": final["spec"], "state_dict": final["model"], "macs": final["macs"], "image_size": 16}, path)
    net = build_from_spec(final["spec"])
    net.load_state_dict(final["model"])
    test = load_subsets(params.data).test
    images, labels = next(iter(make_loader(test, len(test), shuffle=False, seed=0, num_workers=0)))
    grid = evaluate_grid(net, [(images, labels)], progress=False)
    grid["macs"] = grid["skip"].map(final["macs"])
    return path, grid, net.eval(), images, labels


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The all-depths ONNX graph of ``trained``, its grid's top-1 and a latency table at batch 1 and 8 inside."""
    path, grid, *_ = trained
    out = tmp_path_factory.mktemp("onnx") / "all.onnx"
    return export_all_depths(path, out, grid=grid, latency_batches=[1, 8], latency_seconds=2)


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)


# the default family in CI; MobileNetV2 (45 s: 5 stages, 32 depths) in make test-extended, as test_export's families
@pytest.mark.parametrize(
    "trained", ["resnet34", pytest.param("mobilenetv2_050", marks=pytest.mark.extended)], indirect=True
)
def test_every_depth_of_the_graph_gives_the_grid(trained, exported):
    """Each of the 2^S depths run through the one graph in ONNX Runtime: the grid's top-1 on the test split, logits
    within the tolerance of the library's; one If per stage at the top level; every weight stored once (the graph's
    initializers, branches included, add up to the model's state dict, not more); the metadata's grid and latency
    table cover every depth."""
    import onnx

    _, grid, net, images, labels = trained
    result = exported
    session = ort_session(str(result.path), 1)
    for skip, acc1 in zip(grid["skip"], grid["acc1"]):
        (logits,) = session.run(["logits"], {"input": images.numpy(), "skip": skip_flags(skip)})
        assert 100.0 * (logits.argmax(1) == labels.numpy()).mean() == pytest.approx(acc1, abs=1e-9), skip
        with torch.no_grad():
            ref = net(images, skip=skip).numpy()
        assert np.abs(logits - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), skip
    proto = onnx.load(str(result.path))
    assert [n.op_type for n in proto.graph.node].count("If") == net.num_stages
    stored = sum(len(i.raw_data) for g in _graphs(proto.graph) for i in g.initializer)
    weights = sum(t.numel() * t.element_size() for t in net.state_dict().values() if t.dtype.is_floating_point)
    assert stored <= weights, (stored, weights)  # BN folding or a copy per branch would store more
    names = [i.name for g in list(_graphs(proto.graph))[1:] for i in g.initializer]
    assert len(names) == len(set(names)) > 0  # a branch's own weights (skippable blocks) in that branch alone
    meta = read_metadata(result.path)
    assert meta["format"] == FILE_FORMAT and [d["skip"] for d in meta["depths"]] == list(grid["skip"])
    assert [d["acc1"] for d in meta["depths"]] == list(grid["acc1"])
    latency = pd.DataFrame(meta["latency"])
    assert sorted(set(latency["batch_size"])) == [1, 8] and len(latency) == 2 * len(grid)
    assert (latency["p50_ms"] > 0).all() and (latency["threads"] == 1).all()


@pytest.mark.parametrize("trained", ["resnet34"], indirect=True)
def test_the_pt2_program_runs_with_torch_alone(trained, tmp_path):
    """examples/run_all_depths_pt2.py (``torch.export.load(path).module()(x, skip)``) in a fresh interpreter that
    never imports adaskip or timm gives the library's logits for every depth."""
    path, grid, net, images, _ = trained
    result = export_all_depths(path, tmp_path / "all.pt2", fmt="pt2", grid=grid)
    assert read_metadata(result.path)["depths"][0]["skip"] == "FFFF"
    x, log = images[:8], tmp_path / "importtime.log"
    np.save(tmp_path / "x.npy", x.numpy())
    command = [sys.executable, "-X", "importtime", str(ROOT / "examples" / "run_all_depths_pt2.py"), str(result.path)]
    command += ["--images", str(tmp_path / "x.npy"), "--out", str(tmp_path / "logits.npz"), "--skip", *grid["skip"]]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, timeout=300)
    assert done.returncode == 0, log.read_text()[-2000:]
    assert "torch" in _imported(log) and not {"adaskip", "timm"} & _imported(log)
    out = np.load(tmp_path / "logits.npz")
    for skip in grid["skip"]:
        with torch.no_grad():
            assert np.allclose(out[skip], net(x, skip=skip).numpy(), atol=1e-5), skip


def _imported(log: Path) -> set[str]:
    """The top-level modules a ``python -X importtime`` run imported (its stderr in ``log``)."""
    lines = log.read_text().splitlines()
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}


def _rule(depths: pd.DataFrame, p50: dict, first: int, budget: dict) -> str | None:
    """The documented rule, written out: within every limit, the most accurate under a cost cap (ties: faster), the
    fastest for a floor alone (ties: more accurate), or what ``prefer`` names; then fewer MACs, then the skip."""
    batch = budget.get("batch", first)
    rows = [
        (r.skip, r.acc1, p50[(r.skip, batch)], r.macs)
        for r in depths.itertuples()
        if r.macs <= budget.get("max_macs", math.inf)
        and r.acc1 >= budget.get("min_acc", -math.inf)
        and p50[(r.skip, batch)] <= budget.get("max_latency_ms", math.inf)
    ]
    capped = "max_macs" in budget or "max_latency_ms" in budget
    objective = budget.get("prefer") or ("accuracy" if capped else "latency")
    key = {
        "accuracy": lambda r: (-r[1], r[2], r[3], r[0]),
        "latency": lambda r: (r[2], -r[1], r[3], r[0]),
        "macs": lambda r: (r[3], -r[1], r[0]),
    }[objective]
    return min(rows, key=key)[0] if rows else None


def _select(path: Path, budget: dict, capsys) -> str:
    """The skip string ``adaskip select --grid PATH`` answers ``budget`` with."""
    from adaskip.cli import main

    args = [f"--{k.replace('_', '-')}={v}" for k, v in budget.items()]
    with pytest.raises(SystemExit) as done:
        main(["select", "--grid", str(path), *args])
    out = capsys.readouterr().out
    assert done.value.code == 0, out
    return out.split(":")[0]


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("trained", ["resnet34"], indirect=True)
def test_the_example_serves_budgets_with_onnxruntime_alone(trained, exported, tmp_path, capsys):
    """examples/serve_all_depths.py, started as a user starts it: every budget's answer (three levels each of a
    latency cap, a MACs cap and an accuracy floor, and mixes with prefer) is the rule's over the metadata's table, and
    ``adaskip select --grid all.onnx``'s, with the figures it was chosen by; its logits are the library's; a
    non-numeric budget gets the example's own message, without the input; the process never imported torch."""
    _, grid, net, images, _ = trained
    result = exported
    meta = read_metadata(result.path)
    depths = pd.DataFrame(meta["depths"])
    p50 = {(r["skip"], r["batch_size"]): r["p50_ms"] for r in meta["latency"]}
    lat, macs, acc = sorted(p50[(s, 8)] for s in depths["skip"]), sorted(depths["macs"]), sorted(depths["acc1"])
    budgets = [{"max_latency_ms": lat[i], "batch": 8} for i in (0, 7, 15)]
    budgets += [{"max_macs": macs[i]} for i in (0, 7, 15)] + [{"min_acc": acc[i]} for i in (0, 8, 15)]
    budgets += [{"min_acc": acc[4], "prefer": "macs"}, {"max_macs": macs[12], "prefer": "latency", "batch": 8}]
    budgets += [{"max_latency_ms": lat[10], "batch": 8, "min_acc": acc[3]}]
    port, log = free_port(), tmp_path / "importtime.log"
    proc = subprocess.Popen(  # -X importtime: every module the process imports, on stderr
        [sys.executable, "-X", "importtime", str(EXAMPLE), str(result.path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        deadline = time.time() + 60
        while "serving" not in proc.stdout.readline():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        x = images[:3]
        for budget in budgets:
            code, answer = _post(port, {"inputs": x.numpy().tolist(), "params": budget})
            assert code == 200 and answer["skip"] == _rule(depths, p50, 1, budget), (budget, answer)
            assert _select(result.path, budget, capsys) == answer["skip"], budget
            row = depths.set_index("skip").loc[answer["skip"]]
            assert (answer["acc1"], answer["macs"]) == (row["acc1"], row["macs"])
            with torch.no_grad():
                assert np.allclose(answer["logits"], net(x, skip=answer["skip"]).numpy(), atol=1e-4)
        code, answer = _post(port, {"inputs": x.numpy().tolist(), "params": {"max_latency_ms": "abc"}})
        assert code == 400 and answer == {"error": "max_latency_ms must be a number, got 'abc'"}
        code, answer = _post(port, {"inputs": x.numpy().tolist(), "params": {"max_macs": macs[0] - 1}})
        assert code == 400 and answer["error"].startswith("no depth fits")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "onnxruntime" in _imported(log) and not {"torch", "adaskip", "timm"} & _imported(log)


def test_bad_input_stops_with_one_line_and_no_file(tmp_path):
    """A grid of another model, an unknown format, a bad latency batch size: an ExportError before any file is
    written; a single-depth file read as an all-depths export is an ExportError too."""
    from adaskip.export import export_subnetwork
    from adaskip.models import create_model

    net = create_model("resnet18", num_classes=5, channels=[8, 8, 16, 16]).eval()
    out = tmp_path / "all.onnx"
    grid = pd.DataFrame({"skip": [str(c) for c in net.configs()], "macs": 1, "acc1": 50.0})
    with pytest.raises(ExportError, match="not this model's"):
        export_all_depths(net, out, grid=grid, image_size=16)
    with pytest.raises(ExportError, match="unknown all-depths format 'torch'"):
        export_all_depths(net, out, fmt="torch", image_size=16)
    with pytest.raises(ExportError, match="latency batch sizes"):
        export_all_depths(net, out, latency_batches=[0], image_size=16)
    assert list(tmp_path.iterdir()) == []
    export_subnetwork(net, "TTTT", "onnx", tmp_path / "one.onnx", image_size=16)
    with pytest.raises(ExportError, match="not an adaskip all-depths export"):
        read_metadata(tmp_path / "one.onnx")
