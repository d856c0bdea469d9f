"""Per-sub-network cost: multiply-accumulates, parameters and measured latency."""
from __future__ import annotations

import statistics
import time
from typing import Iterable, Optional, Sequence

import pandas as pd
import torch
from torch import nn

from ..models import count_macs, count_params
from ..models.skip import SkipLike
from .grid import _unwrap, select_configs


def complexity_table(model: nn.Module, configs: Optional[Iterable[SkipLike]] = None,
                     input_size: Sequence[int] = (3, 224, 224)) -> pd.DataFrame:
    """One row per configuration (default: all 2^S): ``skip``, ``macs`` (multiply-accumulates of one
    image of shape ``input_size``), ``params`` (parameters the sub-network uses) and
    ``skipped_stages`` (number of ``T`` flags)."""
    net = _unwrap(model)
    rows = [{"skip": str(cfg), "macs": int(count_macs(net, cfg, tuple(input_size))),
             "params": int(count_params(net, cfg)), "skipped_stages": cfg.num_skipped}
            for cfg in select_configs(net, configs)]
    return pd.DataFrame(rows, columns=["skip", "macs", "params", "skipped_stages"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, skip: SkipLike = None, input_size: Sequence[int] = (3, 224, 224),
                    batch_size: int = 1, warmup: int = 2, reps: int = 10) -> float:
    """Median wall-clock milliseconds (``time.perf_counter``) of one plain ``model(x, skip=skip)``
    forward of a batch of ``batch_size`` zero images under ``torch.no_grad``, in eval mode, on the
    model's device, after ``warmup`` untimed forwards (the previous train/eval mode is restored)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if warmup < 0 or batch_size < 1:
        raise ValueError(f"need warmup >= 0 and batch_size >= 1, got warmup={warmup}, batch_size={batch_size}")
    net = _unwrap(model)
    cfg = net.skip_config(skip)
    param = next(net.parameters())
    x = torch.zeros(batch_size, *input_size, dtype=param.dtype, device=param.device)
    was_training = net.training
    net.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                net(x, skip=cfg)
            _sync(param.device)
            for _ in range(reps):
                start = time.perf_counter()
                net(x, skip=cfg)
                _sync(param.device)
                times.append(1000.0 * (time.perf_counter() - start))
    finally:
        net.train(was_training)
    return float(statistics.median(times))


def latency_table(model: nn.Module, configs: Optional[Iterable[SkipLike]] = None,
                  input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1, warmup: int = 2,
                  reps: int = 10) -> pd.DataFrame:
    """``skip`` and ``latency_ms`` (:func:`measure_latency`) for each configuration (default: all)."""
    net = _unwrap(model)
    rows = [{"skip": str(cfg), "latency_ms": measure_latency(net, cfg, input_size, batch_size, warmup, reps)}
            for cfg in select_configs(net, configs)]
    return pd.DataFrame(rows, columns=["skip", "latency_ms"])
