"""Per-sub-network cost: multiply-accumulates, parameters and measured latency (:func:`latency_long_table`:
p50/p90 milliseconds per forward of one batch for every configuration x batch size x thread count on the model's
device; :mod:`.latency` turns it into the grid's wide columns and back)."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..models import count_macs, count_params
from ..models.skip import SkipLike
from ..models import unwrap
from .grid import select_configs
from .latency import LONG_COLUMNS


def complexity_table(
    model: nn.Module, configs: Optional[Iterable[SkipLike]] = None, input_size: Sequence[int] = (3, 224, 224)
) -> pd.DataFrame:
    """One row per configuration (default: all 2^S): ``skip``, ``macs`` (multiply-accumulates of one
    image of shape ``input_size``), ``params`` (parameters the sub-network uses) and
    ``skipped_stages`` (number of ``T`` flags)."""
    net = unwrap(model)
    rows = [
        {
            "skip": str(cfg),
            "macs": int(count_macs(net, cfg, tuple(input_size))),
            "params": int(count_params(net, cfg)),
            "skipped_stages": cfg.num_skipped,
        }
        for cfg in select_configs(net, configs)
    ]
    return pd.DataFrame(rows, columns=["skip", "macs", "params", "skipped_stages"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latencies(
    model: nn.Module,
    skip: SkipLike = None,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
    warmup: int = 2,
    reps: int = 10,
) -> np.ndarray:
    """Wall-clock milliseconds (``time.perf_counter``, CUDA synchronised) of each of ``reps`` plain
    ``model(x, skip=skip)`` forwards of a batch of ``batch_size`` zero images under ``torch.no_grad``, in eval
    mode, on the model's device, after ``warmup`` untimed forwards (the previous train/eval mode is restored)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if warmup < 0 or batch_size < 1:
        raise ValueError(f"need warmup >= 0 and batch_size >= 1, got warmup={warmup}, batch_size={batch_size}")
    net = unwrap(model)
    cfg = net.skip_config(skip)
    param = next(net.parameters())
    x = torch.zeros(batch_size, *input_size, dtype=param.dtype, device=param.device)
    was_training = net.training
    net.eval()
    times = np.empty(reps)
    try:
        with torch.no_grad():
            for _ in range(warmup):
                net(x, skip=cfg)
            _sync(param.device)
            for i in range(reps):
                start = time.perf_counter()
                net(x, skip=cfg)
                _sync(param.device)
                times[i] = 1000.0 * (time.perf_counter() - start)
    finally:
        net.train(was_training)
    return times


def measure_latency(
    model: nn.Module,
    skip: SkipLike = None,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
    warmup: int = 2,
    reps: int = 10,
) -> float:
    """Median milliseconds per forward of a batch of ``batch_size`` (:func:`measure_latencies`)."""
    return float(np.median(measure_latencies(model, skip, input_size, batch_size, warmup, reps)))


def latency_table(
    model: nn.Module,
    configs: Optional[Iterable[SkipLike]] = None,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
    warmup: int = 2,
    reps: int = 10,
) -> pd.DataFrame:
    """``skip`` and ``latency_ms`` (:func:`measure_latency`) for each configuration (default: all)."""
    net = unwrap(model)
    rows = [
        {"skip": str(cfg), "latency_ms": measure_latency(net, cfg, input_size, batch_size, warmup, reps)}
        for cfg in select_configs(net, configs)
    ]
    return pd.DataFrame(rows, columns=["skip", "latency_ms"])


def device_name(device: torch.device | str) -> str:
    """``cpu:<processor model>`` or the CUDA device's name (``NVIDIA H100 80GB HBM3``): latency tables of several
    machines can sit side by side."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}:{_processor()}"


def _processor() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def resolve_threads(settings: Sequence[Optional[int]]) -> list[int]:
    """Thread counts to measure with: ``None`` is torch's current setting (the CPUs the process was given);
    duplicates after resolving are dropped, the order kept."""
    counts = [torch.get_num_threads() if t is None else int(t) for t in settings]
    if not counts or min(counts) < 1:
        raise ValueError(f"need at least one thread setting, each >= 1 or None, got {list(settings)}")
    return list(dict.fromkeys(counts))


def latency_long_table(
    model: nn.Module,
    configs: Optional[Iterable[SkipLike]] = None,
    input_size: Sequence[int] = (3, 224, 224),
    batch_sizes: Sequence[int] = (1,),
    threads: Sequence[Optional[int]] = (None,),
    warmup: int = 2,
    reps: int = 10,
    on_row: Optional[Callable[[], None]] = None,
) -> pd.DataFrame:
    """One row per configuration x batch size x thread count (:data:`LONG_COLUMNS`): p50 and p90 (numpy
    percentiles) of :func:`measure_latencies`, milliseconds per forward of one batch, on the model's device. The
    thread count is set with ``torch.set_num_threads`` for each measurement and restored afterwards; ``on_row`` is
    called after each row (a progress bar)."""
    net = unwrap(model)
    cfgs, device = select_configs(net, configs), device_name(next(net.parameters()).device)
    rows, before = [], torch.get_num_threads()
    try:
        for t in resolve_threads(threads):
            torch.set_num_threads(t)
            for b in batch_sizes:
                for cfg in cfgs:
                    p50, p90 = np.percentile(measure_latencies(net, cfg, input_size, b, warmup, reps), [50, 90])
                    rows.append([str(cfg), device, int(b), t, float(p50), float(p90)])
                    if on_row:
                        on_row()
    finally:
        torch.set_num_threads(before)
    return pd.DataFrame(rows, columns=LONG_COLUMNS)
