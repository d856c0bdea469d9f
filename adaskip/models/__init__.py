"""Adaptive-depth wrappers over timm models."""

from .adaptive import (
    AdaptiveDepthNet,
    ModelError,
    candidate_splits,
    check_input_size,
    create_model,
    default_split,
    find_family,
    load_timm_weights,
    supported_models,
    unwrap,
)
from .complexity import count_macs, count_params
from .norm import SkipAwareNorm
from .pretrained import PretrainedError, load_pretrained
from .skip import SkipConfig

__all__ = [
    "AdaptiveDepthNet",
    "ModelError",
    "SkipAwareNorm",
    "SkipConfig",
    "candidate_splits",
    "check_input_size",
    "count_macs",
    "count_params",
    "create_model",
    "default_split",
    "find_family",
    "load_pretrained",
    "load_timm_weights",
    "PretrainedError",
    "supported_models",
    "unwrap",
]
