"""adaskip: adaptive depth networks with skippable sub-paths, trained by self-distillation."""
from .models import (AdaptiveDepthNet, SkipConfig, count_macs, count_params, create_model, load_timm_weights,
                     supported_models)

__all__ = ["AdaptiveDepthNet", "SkipConfig", "count_macs", "count_params", "create_model", "load_timm_weights",
           "supported_models"]
__version__ = "0.1.0"
