"""Self-distillation: loss (pure functions), train step, per-worker loop. Framework-agnostic (no Ray)."""

from ..models import unwrap
from ..models.file import CheckpointError, build_from_spec, load_file, load_model, save_atomic  # (re-exported)
from .loop import SELF_DISTILLATION, FitMode, TrainingDiverged, WorkerEnv, fit
from .loss import DistillConfig, LossTerms, cross_entropy, distillation_terms, feature_loss, kd_loss
from .step import Precision, distill_step, kd_step, plain_step

__all__ = [
    "SELF_DISTILLATION",
    "CheckpointError",
    "DistillConfig",
    "FitMode",
    "LossTerms",
    "Precision",
    "TrainingDiverged",
    "WorkerEnv",
    "build_from_spec",
    "cross_entropy",
    "distill_step",
    "distillation_terms",
    "feature_loss",
    "fit",
    "kd_loss",
    "kd_step",
    "load_file",
    "load_model",
    "plain_step",
    "save_atomic",
    "unwrap",
]
