"""Self-distillation: loss (pure functions), train step, per-worker loop. Framework-agnostic (no Ray)."""
from .loss import DistillConfig, LossTerms, cross_entropy, distillation_terms, feature_loss, kd_loss
from ..models import unwrap
from .step import Precision, distill_step, kd_step, plain_step

__all__ = ["DistillConfig", "LossTerms", "Precision", "cross_entropy", "distill_step", "distillation_terms",
           "feature_loss", "kd_loss", "kd_step", "plain_step", "unwrap"]
from .checkpoint import CheckpointError, build_from_spec, load_file, load_model, save_atomic  # noqa: E402
from .loop import SELF_DISTILLATION, FitMode, TrainingDiverged, WorkerEnv, fit  # noqa: E402
