"""Serving by budget without a server: which sub-network answers each request (adaskip.serving), the latency table
a served model uses (its own device's, or measured at load), adaskip profile, and select on a profiled table. The
real `mlflow models serve` runs in tests/test_registry.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    import torch

    from adaskip.models import create_model

    torch.manual_seed(0)
    return create_model("resnet18", num_classes=10).eval()


@pytest.fixture
def model_file(tmp_path: Path, net) -> Path:
    from adaskip.training import save_atomic

    path = tmp_path / "model.pt"
    save_atomic({"spec": net.spec, "state_dict": net.state_dict(), "image_size": 16}, path)
    return path


def _grid(n: int) -> pd.DataFrame:
    """Every sub-network of an n-stage model: MACs (all different) and top-1 fall with each skipped stage."""
    skips = ["".join("T" if (i >> (n - 1 - k)) & 1 else "F" for k in range(n)) for i in range(2**n)]
    macs = [100.0 - sum(3 * 2**k for k, c in enumerate(s) if c == "T") for s in skips]
    return pd.DataFrame({"skip": skips, "macs": macs, "acc1": [m * 0.9 for m in macs], "pareto": True})


def _latency(grid: pd.DataFrame, device: str, threads: int = 1, scale: float = 0.01) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "skip": grid.skip,
            "device": device,
            "batch_size": 1,
            "threads": threads,
            "p50_ms": grid.macs * scale,
            "p90_ms": grid.macs * scale * 1.1,
        }
    )


def _menu(net, tables, grid=None, default=None):
    from adaskip.serving import build_menu

    lines = []
    menu = build_menu(net, 16, grid, tables, default, log=lines.append)
    return menu, lines


def test_requests_name_a_subnetwork_or_a_budget(net):
    from adaskip.evaluation.complexity import device_name
    from adaskip.serving import RequestError

    n = net.num_stages
    grid = _grid(n)
    menu, lines = _menu(net, [_latency(grid, device_name("cpu"))], grid)
    assert lines == [f"adaskip: latency table for {device_name('cpu')} with 1 thread(s): {2**n} rows"]
    assert menu.pick(None) == ("F" * n, None)
    assert menu.pick({"skip": "t" * n, "max_latency_ms": None}) == ("T" * n, None)  # MLflow passes unset params
    # a cost cap: the most accurate within it (latency 0.01 ms per MAC here), with the figures it was chosen by
    best = grid[grid.macs <= 80.5].sort_values("acc1").iloc[-1]
    figures = {"acc1": best.acc1, "macs": best.macs, "p50_ms": pytest.approx(best.macs / 100), "batch": 1}
    assert menu.pick({"max_latency_ms": 0.805}) == (best.skip, figures)
    assert menu.pick({"max_macs": 80.5}) == (best.skip, figures)
    # a floor alone: the fastest that meets it
    fastest = grid[grid.acc1 >= 80].sort_values("macs").iloc[0].skip
    assert menu.pick({"min_acc": 80})[0] == fastest != "F" * n
    assert menu.pick({"min_acc": 80, "prefer": "accuracy"})[0] == "F" * n
    for params, start in (
        (
            {"skip": "TXF"},
            f"skip 'TXF' is not a sub-network of this model: give one T (skip) or "
            f"F (run) per stage, {n} letters: {'F' * n} (super-net)",
        ),
        ({"skip": "F" * (n + 1)}, f"skip '{'F' * (n + 1)}' is not a sub-network"),
        ({"max_latency_ms": -2}, "max_latency_ms must be a number >= 0, got -2"),
        ({"min_acc": 50, "prefer": "speed"}, "prefer must be one of accuracy, latency, macs, got 'speed'"),
        ({"max_latency_ms": float("nan")}, "max_latency_ms must be a number >= 0, got nan"),
        ({"batch": 1}, "no budget given: pass max_latency_ms, max_macs, min_acc"),
        (
            {"max_latency_ms": 1, "batch": 2},
            "batch 2: no latency measured at that batch size; the latency table has batch sizes 1",
        ),
        ({"skip": "F" * n, "max_macs": 5}, "skip and a budget (max_macs) were both given"),
        (
            {"max_latency_ms": 0.1},
            f"no sub-network fits latency <= 0.1 ms at batch 1: the cheapest is {'T' * n}",
        ),
    ):
        with pytest.raises(RequestError) as e:
            menu.pick(params)
        assert str(e.value).startswith(start), (params, str(e.value))
    with pytest.raises(RequestError, match=r"p50 0\.55 ms"):  # the smallest achievable latency, named
        menu.pick({"max_latency_ms": 0.1})


def test_a_model_never_evaluated_serves_skips_and_refuses_budgets(net):
    from adaskip.serving import RequestError

    menu, lines = _menu(net, [], None, default="tf" + "F" * (net.num_stages - 2))
    assert menu.pick({}) == ("TF" + "F" * (net.num_stages - 2), None)  # a registered version's default
    with pytest.raises(RequestError, match="^this model has no evaluation grid, so a budget cannot be met: pass skip"):
        menu.pick({"min_acc": 50})
    assert "measured them at load" in lines[0]  # no table at all: measured, and said so


def test_latency_table_of_this_device_and_thread_count_else_measured_at_load(net):
    import torch

    from adaskip.evaluation.complexity import device_name
    from adaskip.serving import device_table

    grid, here = _grid(net.num_stages), device_name("cpu")
    other = _latency(grid, "NVIDIA H100 80GB HBM3", scale=0.001)
    mine, newer = _latency(grid, here), _latency(grid, here, scale=0.02)
    assert device_table([other, mine, newer], here, 1)["p50_ms"].tolist() == newer["p50_ms"].tolist()  # later wins
    assert device_table([other], here, 1).empty
    menu, lines = _menu(net, [other, mine], grid)
    assert "latency table for" in lines[0] and menu.latency["p50_ms"].tolist() == mine["p50_ms"].tolist()
    # profiled at another thread count, or on another machine only: measured here at load, at the batch sizes held
    two = pd.concat([_latency(grid, here, threads=2), _latency(grid, here, threads=2).assign(batch_size=3)])
    assert torch.get_num_threads() == 1
    menu, lines = _menu(net, [other, two], grid)
    assert lines[0].startswith(
        f"adaskip: no latency table for {here} with 1 thread(s) covers all "
        f"{2**net.num_stages} sub-networks: measured them at load, batch 1, 3, in "
    )
    assert sorted(set(menu.latency.batch_size)) == [1, 3] and set(menu.latency.device) == {here}
    assert (menu.latency.p50_ms > 0).all() and set(menu.latency.threads) == {1}


def test_registry_aliases_of_a_grid():
    from adaskip.select import aliases

    grid = pd.DataFrame(
        {
            "skip": ["FF", "FT", "TF", "TT"],
            "acc1": [90.0, 89.5, 89.2, 80.0],
            "macs": [4.0, 3.0, 2.5, 1.0],
            "latency_ms": [4.0, 3.1, 3.0, 1.0],
        }
    )
    assert aliases(grid) == {"super": "FF", "base": "TT", "fastest-within-1pct": "TF"}
    assert aliases(grid.drop(columns="latency_ms"))["fastest-within-1pct"] == "TF"  # fewest MACs then
    assert aliases(grid, within=0.6)["fastest-within-1pct".replace("1", "0.6")] == "FT"


def test_profile_measures_every_subnetwork_and_select_uses_it(tmp_path: Path, model_file: Path, net):
    from adaskip.evaluation.latency import LONG_COLUMNS
    from adaskip.profile import ProfileError, profile
    from adaskip.select import Budget, SelectError, choose, with_latency

    result = profile(model_file, [1, 2], [1], reps=3, progress=False)
    n = 2**net.num_stages
    assert list(result.table.columns) == LONG_COLUMNS and len(result.table) == 2 * n
    assert (result.table.p90_ms >= result.table.p50_ms).all() and set(result.table.threads) == {1}
    assert result.file_name().startswith("cpu-") and result.file_name().endswith("-t1.csv")
    assert len(result.summary().splitlines()) == n + 1
    # select with the profiled table of one machine among two
    result.table.to_csv(tmp_path / "here.csv", index=False)
    result.table.assign(device="gpu:x", p50_ms=0.001).to_csv(tmp_path / "there.csv", index=False)
    grid = _grid(net.num_stages).assign(
        latency_ms=99.0, device="old", threads=1, latency_p50_ms_b1=99.0, latency_p90_ms_b1=99.0
    )
    both = with_latency(grid, [tmp_path / "here.csv", tmp_path / "there.csv"])
    assert len(both) == 2 * n and "old" not in set(both.device)
    with pytest.raises(SelectError, match="the grid holds 2 devices: pass --device"):
        choose(both, Budget(max_latency_ms=1))
    assert choose(both, Budget(max_latency_ms=0.01, device="gpu")).chosen["skip"] == "F" * net.num_stages
    with pytest.raises(SelectError, match="no latency table at nowhere.csv: write one with adaskip profile"):
        with_latency(grid, ["nowhere.csv"])
    for kwargs, match in (
        ({"batch_sizes": [0]}, "batch sizes and thread counts must be >= 1"),
        ({"reps": 0}, "--reps >= 1"),
        ({"device": "tpu"}, "use cpu or cuda"),
    ):
        with pytest.raises(ProfileError, match=match):
            profile(model_file, progress=False, **kwargs)


def test_profile_command(tmp_path: Path, model_file: Path):
    """The command a user runs: the table on stdout, the CSV written; no tracking store here: nothing attached."""
    out = tmp_path / "lat.csv"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "adaskip"),
            "profile",
            str(model_file),
            "--reps",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "ADASKIP_PROGRESS": "0"},
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out, dtype={"skip": str})
    assert done.stdout.splitlines()[0].split()[0] == "skip" and f"{len(table)} rows on cpu:" in done.stdout
    assert "attached" not in done.stdout and not (tmp_path / "mlflow.db").exists()
    assert np.isfinite(table.p50_ms).all()
    bad = subprocess.run(
        [str(Path(sys.executable).parent / "adaskip"), "profile", str(model_file), "--batch", "0", "--no-attach"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: batch sizes and thread counts must be >= 1")
