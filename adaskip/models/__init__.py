"""Adaptive-depth wrappers over timm models."""
from .adaptive import AdaptiveDepthNet, create_model, default_split, load_timm_weights, supported_models
from .complexity import count_macs, count_params
from .norm import SkipAwareNorm
from .pretrained import PretrainedError, load_pretrained
from .skip import SkipConfig

__all__ = ["AdaptiveDepthNet", "SkipAwareNorm", "SkipConfig", "count_macs", "count_params", "create_model",
           "default_split", "load_pretrained", "load_timm_weights", "PretrainedError", "supported_models"]
