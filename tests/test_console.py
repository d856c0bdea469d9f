"""What a run prints: the per-epoch line, rank 0 only, and the filter that keeps Ray's repeated lines out."""

from __future__ import annotations

import logging

import pytest

from adaskip import console
from adaskip.orchestration.cluster import quiet_ray_output

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

METRICS = {
    "train_total": 0.81234,
    "train_acc_super": 91.24,
    "train_acc_base": 90.0,
    "val_acc_super": 97.41,
    "val_acc_base": 96.29,
    "lr": 0.18,
    "epoch": 3,
    "ratio.s0.m1": 0.29,
    "ratio_mandatory": 0.19,
}


def test_epoch_line_is_compact_and_aligned():
    line = console.epoch_line(3, 15, METRICS, 12.34)
    assert line == "epoch  3/15  loss 0.812  train  91.2  val super  97.4 base  96.3  lr 0.18    12.3 s"
    assert "ratio" not in line
    # every epoch of a run has the same width, so the columns line up
    assert (
        len(
            {
                len(console.epoch_line(e, 15, {**METRICS, "val_acc_base": v, "lr": lr}, s))
                for e, v, lr, s in [(1, 9.0, 0.2, 1.0), (9, 100.0, 0.0895, 99.9), (15, 55.5, 1e-05, 5.0)]
            }
        )
        == 1
    )


def test_epoch_line_of_a_baseline_uses_its_own_loss_and_accuracy():
    line = console.epoch_line(
        1,
        2,
        {"train_loss": 1.5, "train_acc_correct": 50.0, "val_acc_super": 60.0, "val_acc_base": 40.0, "lr": 0.1},
        2.0,
    )
    assert "loss 1.500" in line and "train  50.0" in line


@pytest.mark.parametrize("seconds,text", [(12.34, "12.3 s"), (72, "1 min 12 s"), (3725, "1 h 02 min")])
def test_duration(seconds, text):
    assert console.duration(seconds) == text


RAY_LINES = [
    "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
    "Continuing to monitor.",
    "Attempting to start training worker group of size 2 with the following resources: [{'CPU': 0.9}] * 2",
    "Requesting resources: {'CPU': 0.9} * 2",
    "Started training worker group of size 2: ",
    "- (ip=127.0.0.1, pid=13600) world_rank=0, local_rank=0, node_rank=0",
    "Setting up process group for: env:// [rank=0, world_size=2]",
    "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/x/checkpoint_000000)",
    "Reporting training result 10: TrainingReport(checkpoint=None, metrics={'a': 1}, validation=False) from rank 1",
    "Moving model to device: cpu",
    "Wrapping provided model in DistributedDataParallel.",
    "[2026-11-30 12:38:02,041 E 13501 13533] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: "
    "'4d47' has constructor arguments in the object store and max_restarts > 0. If the arguments ...",
]
KEPT_LINES = [
    "epoch  3/15  loss 0.812  train  91.2  val super  97.4 base  96.3  lr 0.18   12.3 s",
    "Traceback (most recent call last):",
    "RuntimeError: Failed to start training worker group",
    "WARNING the resume checkpoint holds no EMA weights",
]


@pytest.mark.parametrize("line", RAY_LINES)
def test_ray_noise_is_recognised(line):
    assert console.is_ray_noise(line)


@pytest.mark.parametrize("line", KEPT_LINES)
def test_other_lines_are_kept(line):
    assert not console.is_ray_noise(line)


def test_quiet_ray_output_filters_the_forwarded_batches(monkeypatch):
    from ray._private import ray_logging

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    dispatcher = ray_logging.WorkerStandardStreamDispatcher()
    printed = []
    dispatcher.add_handler("ray_print_logs", lambda data: printed.append(data["lines"]))
    monkeypatch.setattr(ray_logging, "global_worker_stdstream_dispatcher", dispatcher)
    assert quiet_ray_output()
    assert not quiet_ray_output()  # installed once
    dispatcher.emit({"pid": 1, "lines": RAY_LINES + KEPT_LINES})
    dispatcher.emit({"pid": 2, "lines": RAY_LINES[:2]})  # nothing left: nothing printed
    dispatcher.emit(
        {
            "pid": 3,
            "actor_name": "PlacementGroupCleaner",
            "lines": ["Traceback (most recent call last):", "ConnectionError: Found multiple active Ray instances"],
        }
    )  # a Ray Train watchdog: all of it
    dispatcher.emit({"pid": 4, "actor_name": "RayTrainWorker", "lines": WORKER_TRACEBACK})
    assert printed == [
        console.condense_tracebacks(KEPT_LINES),
        ["Error in training function:", "RuntimeError: Connection reset by peer [10.0.0.6]"],
    ]


# What a surviving DDP worker logs when its peer's host dies (Ray Train then restarts the group).
WORKER_TRACEBACK = [
    "Error in training function:",
    "Traceback (most recent call last):",
    '  File "adaskip/training/loop.py", line 242, in fit',
    "    out, loss = step(images, targets)",
    "                ^^^^^^^^^^^^^^^^^^^^^^^",
    "",
    "RuntimeError: Connection reset by peer [10.0.0.6]",
]


def test_tracebacks_keep_their_heading_and_exception_lines():
    assert console.condense_tracebacks(WORKER_TRACEBACK) == WORKER_TRACEBACK[:1] + WORKER_TRACEBACK[-1:]
    chained = [
        "Traceback (most recent call last):",
        '  File "a.py", line 1, in <module>',
        "KeyError: 'x'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "a.py", line 3, in <module>',
        "ValueError: bad",
    ]
    assert console.condense_tracebacks(chained) == [
        "KeyError: 'x'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "ValueError: bad",
    ]
    plain = ["epoch 1/2  loss 1.0", "  indented, outside any traceback"]
    assert console.condense_tracebacks(plain) == plain


def test_quiet_ray_output_is_off_when_verbose(monkeypatch):
    from ray._private import ray_logging

    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    dispatcher = ray_logging.WorkerStandardStreamDispatcher()
    dispatcher.add_handler("ray_print_logs", print)
    monkeypatch.setattr(ray_logging, "global_worker_stdstream_dispatcher", dispatcher)
    assert not quiet_ray_output()
    assert dispatcher.handlers == [("ray_print_logs", print)]


@pytest.mark.parametrize(
    "flag,tty,expected", [("1", False, True), ("0", True, False), (None, True, True), (None, False, False)]
)
def test_progress_bars_follow_the_driver(monkeypatch, flag, tty, expected):
    if flag is None:
        monkeypatch.delenv(console.PROGRESS_ENV, raising=False)
    else:
        monkeypatch.setenv(console.PROGRESS_ENV, flag)
    monkeypatch.setattr(console.sys.stderr, "isatty", lambda: tty, raising=False)
    assert console.progress_bars() is expected


@pytest.mark.parametrize("rank", [0, 1])
def test_fit_logs_one_info_line_per_epoch_from_rank_0_only(tiny_params, caplog, rank):
    """Rank 0 logs one epoch line at INFO (its full metrics at DEBUG); any other rank logs nothing at INFO."""
    from adaskip.training import loop

    with caplog.at_level(logging.DEBUG):
        loop.fit(tiny_params, loop.WorkerEnv(rank=rank), epochs=1)
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and r.name == loop.log.name]
    if rank == 0:
        assert len(info) == 1 and info[0].startswith("epoch 1/1  loss ") and "ratio" not in info[0]
    else:
        assert info == []
    assert any("ratio.s0.m1" in m for m in debug)  # the per-block ratios stay in the DEBUG log
