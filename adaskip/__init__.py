"""adaskip: adaptive depth networks with skippable sub-paths, trained by self-distillation."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AdaptiveDepthNet",
    "SkipConfig",
    "count_macs",
    "count_params",
    "create_model",
    "load_timm_weights",
    "supported_models",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: `import adaskip.config` (params validation, Ray Tune trial drivers) must not pay for importing timm.
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module 'adaskip' has no attribute {name!r}")
