"""Study cells as Ray Train runs on the session's real local Ray cluster (2 CPUs), logging to a real MLflow store:
the queue, a KD baseline's teacher, a failing cell, the cache that makes a re-run train nothing again."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adaskip.ablation.spec import StudySpec, cells
from adaskip.errors import AdaskipError
from adaskip.orchestration.storage import Storage
from adaskip.tracking import FAILED, FINISHED, Tracker

# the queue and a KD baseline's teacher also run in CI, in test_pipeline's study; here also a failing cell, the log
# lines and the cache (about 3.5 min on 2 cores): make test-extended
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.extended]


def _steps(tracker: Tracker, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in tracker.client.get_metric_history(run_id, key))


def test_cells_train_as_ray_train_runs_queue_fail_alone_and_are_kept(
    ray_cluster, tiny_params, mlflow_uri, tmp_path: Path, caplog
):
    """Three 1-worker cells on 2 CPUs: the plan runs two at once and queues the third (no deadlock). The adaptive-depth
    cell is evaluated over its whole grid; the KD baseline's teacher (no cell of this study is that network) is
    trained first by its own Ray Train run (its epochs logged as teacher_*), then distilled into the base-net; a
    diverging cell fails at once, alone, named (no restarts: a recurring error); every MLflow child has each epoch
    once and the node it trained on. Finished cells leave their rows and nothing else in the cache, and a re-run
    trains nothing again."""
    import ray

    from adaskip.ablation.cache import cell_hash
    from adaskip.orchestration.cells import run_cells

    spec = StudySpec(
        name="s",
        seeds=[0],
        epochs=2,
        overrides={"train": {"workers": 1, "cpus_per_worker": 1}},
        variants={
            "adn": {},
            "kd": {"baseline": "base", "teacher": "super"},
            "bad": {"overrides": {"train": {"lr": 1e30}}},
        },
    )
    todo = cells(spec, tiny_params)
    tracker = Tracker(mlflow_uri, "t")
    parent = tracker.start_run("study")
    cache = Storage(str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="adaskip")
    with pytest.raises(AdaskipError, match=r"1 study cell\(s\) failed") as err:
        run_cells(todo, cache, tracker, parent)
    assert "bad-seed0: RecurringTrainingError" in str(err.value) and "loss is nan" in str(err.value), str(err.value)
    log = caplog.text
    assert (
        "plan: 3 cells, each 1 worker x 1 CPU; the cluster (1 node(s), 2 CPUs, 0 GPUs) runs 2 at once, 2 waves" in log
    )
    assert all(f"cell {c} " in log for c in ("adn-seed0 done", "kd-seed0 done", "bad-seed0 failed"))

    runs = {r.data.tags["variant"]: r for r in tracker.children(parent)}
    assert {v: r.info.status for v, r in runs.items()} == {"adn": FINISHED, "kd": FINISHED, "bad": FAILED}
    node = ray.get_runtime_context().get_node_id()
    for v in ("adn", "kd"):
        run = runs[v].info.run_id
        assert _steps(tracker, run, "val_acc_super") == [1, 2], v  # each epoch once
        assert runs[v].data.tags["adaskip.train_nodes"] == node and runs[v].data.tags["adaskip.cell_hash"]
    kd = runs["kd"].info.run_id
    assert _steps(tracker, kd, "teacher_train_loss") == [1, 2] and _steps(tracker, kd, "train_kd") == [1, 2]
    assert "teacher_train_loss" not in runs["adn"].data.metrics
    assert runs["kd"].data.metrics["test_acc1_TTTT"] >= 0 and runs["adn"].data.metrics["test_acc1_FFFF"] >= 0
    good = [c for c in todo if c.variant != "bad"]
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    bad = next(c for c in todo if c.variant == "bad")
    # finished cells keep their rows only (no checkpoints, no model files); the failed one its run, to resume
    assert left == sorted([f"{c.key}-{cell_hash(c)}.csv" for c in good] + [f"cell-{cell_hash(bad)}"]), left

    rows = run_cells(good, cache, tracker, parent)
    assert len(tracker.children(parent)) == 3  # nothing trained again
    assert set(rows[rows.variant == "kd"].skip) == {"TTTT"}
    assert (
        (rows.variant == "adn").sum() == 16 and rows.acc1.between(0, 100).all() and rows.ratio_mandatory.notna().all()
    )
