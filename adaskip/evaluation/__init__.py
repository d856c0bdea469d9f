"""Sub-network evaluation: the grid of all 2^S configurations (shared stage prefixes), MACs, params,
latency, Pareto front and the area under the accuracy/MACs trade-off curve."""

from __future__ import annotations

import importlib
from typing import Any

# Lazy: the report stage needs only pandas-level helpers, not torch and timm.
_LAZY = {
    "complexity_table": "complexity",
    "latency_table": "complexity",
    "measure_latency": "complexity",
    "measure_latencies": "complexity",
    "latency_long_table": "complexity",
    "latency_wide": "latency",
    "latency_long": "latency",
    "latency_column": "latency",
    "device_name": "complexity",
    "evaluate_grid": "grid",
    "grid_logits": "grid",
    "select_configs": "grid",
    "topk_correct": "grid",
    "pareto_front": "pareto",
    "recalibrate_bn": "recalibrate",
    "recalibrated_grid": "recalibrate",
    "summarise": "pareto",
    "tradeoff_auc": "pareto",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'adaskip.evaluation' has no attribute {name!r}")
