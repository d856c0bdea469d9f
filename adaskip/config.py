"""Typed parameters of the whole pipeline, built from params.yaml and validated before any work starts."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data import DataConfig
from .errors import AdaskipError
from .files import short_hash
from .redact import credentials_in, redact


class ConfigError(AdaskipError, ValueError):
    """params.yaml is malformed or holds a bad value; the message names the key."""


class _Section(BaseModel):
    """A params.yaml section. Its defaults are params.yaml's values (the documented source, kept equal by
    tests/test_config.py): a key left out of params.yaml means what params.yaml ships."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(_Section):
    name: str = "resnet34"
    split: Optional[list[int]] = None
    skip_aware_norm: bool = True
    num_stages: int = Field(4, ge=1)
    kwargs: dict[str, Any] = Field(
        {"resnet": {"channels": [16, 32, 64, 128]}, "swin": {"embed_dim": 48}},
        description="extra timm.create_model arguments, for any model or per family "
        "({resnet: {...}, vit: {...}}: only model.name's family applies)",
    )
    pretrained: Optional[str] = Field(
        None,
        description="plain timm weights to start training from: null (scratch), a "
        "local .pth/.pt/.bin/.safetensors file, or a timm hub name / hf-hub: id (needs a "
        "network); both norm sets start from them, a head of another class count is "
        "re-initialised; a resumed run keeps its checkpoint",
    )

    @field_validator("pretrained")
    @classmethod
    def _absolute(cls, v: Optional[str]) -> Optional[str]:
        """A local file becomes an absolute path (Ray workers run with another cwd); a hub name stays as is."""
        if not v:
            return None
        # as adaskip.models.pretrained.is_local, without importing timm here
        local = v.lower().endswith((".pth", ".pt", ".bin", ".safetensors")) or Path(v).expanduser().is_file()
        return str(Path(v).expanduser().resolve()) if local else v


class DistillConfig(_Section):
    """The self-distillation loss's knobs (docs/method.md section 4), the ``train`` section's fields of the same names:
    one definition, validated once, for params.yaml and for the library (``adaskip.training.distill_step``).
    ``top_k=None`` distils over all classes; ``self_distillation=False`` is the ablation that trains the base-net with
    CE instead of KD; ``base_ce_weight`` adds CE on the base-net on top of KD."""

    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(1.0, gt=0)
    top_k: Optional[int] = Field(None, ge=1)
    feature_weight: float = Field(0.0, ge=0)
    base_ce_weight: float = Field(0.0, ge=0)
    self_distillation: bool = True
    label_smoothing: float = Field(0.1, ge=0, lt=1)


# The keys the tune stage sweeps when params.yaml leaves them null; a value there fixes them (never swept), and a
# null one that no sweep chose trains at these defaults (the paper's alpha and T; a null split is the paper's rule).
SWEPT = {"train.alpha": 0.5, "train.temperature": 1.0, "model.split": None}
TUNED = "tune"  # the "source" of a best_config.json the tune stage chose (apply_tuned applies only those)


class TrainParams(DistillConfig):
    alpha: Optional[float] = Field(
        None, ge=0, le=1, description="null: swept by tune (tune.alpha), 0.5 without a sweep; a number: fixed"
    )
    temperature: Optional[float] = Field(
        None, gt=0, description="null: swept by tune (tune.temperature), 1.0 without a sweep; a number: fixed"
    )
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: str = "sgd"
    lr: float = Field(0.2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    scheduler: Literal["cosine", "step", "multistep", "none"] = "cosine"
    decay_milestones: list[int] = [60, 100, 140]
    warmup_epochs: int = Field(0, ge=0)
    precision: Optional[Literal["bf16", "fp16"]] = None
    seed: int = 0
    workers: int = Field(2, ge=1, description="Ray Train workers (DDP processes)")
    cpus_per_worker: float = Field(0.9, gt=0)
    use_gpu: bool = False
    placement: Literal["pack", "spread"] = Field(
        "pack",
        description="Ray Train workers packed on few nodes (fast "
        "collectives) or spread over many (memory bandwidth, host failures)",
    )
    max_failures: int = Field(2, ge=-1, description="worker-group restarts from the latest checkpoint; -1 = forever")
    mixup: float = Field(
        0.0,
        ge=0,
        description="timm Mixup alpha on every train batch (soft targets, smoothed by label_smoothing); 0 = off",
    )
    cutmix: float = Field(0.0, ge=0, description="timm CutMix alpha; 0 = off")
    mixup_prob: float = Field(1.0, ge=0, le=1, description="probability of mixing a batch when mixup/cutmix is on")
    mixup_switch_prob: float = Field(
        0.5, ge=0, le=1, description="probability of CutMix instead of Mixup when both are on"
    )
    ema: bool = Field(
        False,
        description="keep a timm ModelEmaV3 of the weights: validation and the final model "
        "use it, checkpoints hold both",
    )
    ema_decay: float = Field(0.9998, gt=0, lt=1, description="EMA decay per optimizer step")
    ema_warmup: bool = Field(False, description="timm's EMA decay warm-up (low decay in the first steps)")
    channels_last: bool = Field(
        True,
        description="channels-last memory format for model and batches of the "
        "convolutional families (resnet, mobilenetv2: faster CPU steps, benchmarks/train_step.py measures "
        "them); no effect on vit/swin",
    )


class TuneParams(_Section):
    enabled: bool = Field(True, description="false: no sweep; train uses params.yaml's alpha, temperature and split")
    num_samples: int = Field(4, ge=1)
    epochs: int = Field(2, ge=1)
    alpha: tuple[float, float] = (0.3, 0.8)
    temperature: tuple[float, float] = (1.0, 4.0)
    splits: Union[Literal["auto"], list[list[int]], None] = Field(
        "auto",
        description="candidate split points: auto (derived from the model's stage depths), a list, or null "
        "(model.split only)",
    )
    grace_period: int = Field(2, ge=1)
    workers: int = Field(0, ge=0, description="Ray Train workers per trial; 0 = train in the trial's own process")
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _ranges(self) -> "TuneParams":
        for key, (lo, hi), bounds in (("alpha", self.alpha, (0, 1)), ("temperature", self.temperature, (1e-6, None))):
            if lo > hi or lo < bounds[0] or (bounds[1] is not None and hi > bounds[1]):
                raise ValueError(f"tune.{key} must be [low, high] with low <= high inside {bounds}, got {[lo, hi]}")
        return self


class EvaluateParams(_Section):
    batch_size: int = Field(128, ge=1)
    parallelism: int = Field(2, ge=1, description="parallel Ray tasks; each takes a subtree of stage prefixes")
    latency_batch_sizes: list[int] = Field(
        [1, 32],
        min_length=1,
        description="batch sizes latency is measured at (ms per forward of one batch); latency_ms is at the first",
    )
    latency_threads: list[Optional[int]] = Field(
        [None],
        min_length=1,
        description="torch intra-op threads latency "
        "is measured with; null = the CPUs each evaluation task holds (1 "
        "unless a count here asks for more)",
    )
    latency_warmup: int = Field(2, ge=0, description="untimed forwards before each latency measurement")
    latency_reps: int = Field(10, ge=1)
    recalibrate_bn: bool = Field(False, description="re-estimate BatchNorm statistics per intermediate sub-network")
    recalibrate_batches: int = Field(10, ge=1)
    use_gpu: bool = Field(
        False,
        description="each evaluation task holds one GPU: accuracy and latency are measured "
        "on it (device column: the GPU's name); false: on the CPUs the task holds",
    )

    @field_validator("latency_batch_sizes", "latency_threads")
    @classmethod
    def _positive_unique(cls, v: list[Optional[int]]) -> list[Optional[int]]:
        if any(x is not None and x < 1 for x in v) or len(set(v)) != len(v):
            raise ValueError(f"must be distinct positive integers, got {v}")
        return v

    def task_cpus(self) -> int:
        """CPUs each evaluation task holds: the largest latency thread count, at least 1."""
        return max([1] + [t for t in self.latency_threads if t is not None])


class MlflowParams(_Section):
    experiment: str = "adaskip"
    tracking_uri: Optional[str] = Field(
        None, description="default: sqlite:///<project>/mlflow.db; env MLFLOW_TRACKING_URI wins"
    )
    registered_model: Optional[str] = Field(
        "adaskip",
        description="Model Registry name the train stage registers the "
        "model under (a new version per run); null: not registered",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, v: Optional[str]) -> Optional[str]:
        if v and credentials_in(v):
            raise ValueError(
                f"{redact(v)} carries a credential: give the server's URL only and the password in "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), never in a file"
            )
        return v


class ClusterParams(_Section):
    storage: Optional[str] = Field(
        None,
        description="where Ray persists checkpoints, Tune state and caches: a path "
        "every node mounts or s3://bucket/prefix; default <project>/.ray_results; env "
        "ADASKIP_STORAGE wins",
    )

    @field_validator("storage")
    @classmethod
    def _scheme(cls, v: Optional[str]) -> Optional[str]:
        if v and (problem := storage_problem(v)):
            raise ValueError(problem)
        return v


def storage_problem(uri: str) -> Optional[str]:
    """What is wrong with a storage location, or None: one rule for ``cluster.storage`` and ``ADASKIP_STORAGE``."""
    scheme = uri.split("://", 1)[0] if "://" in uri else None
    if scheme not in (None, "s3", "gs", "gcs", "hdfs", "file"):
        return f"unsupported scheme {scheme!r}: use a path every node mounts or s3://bucket/prefix"
    if credentials_in(uri):
        return (
            f"{redact(uri)} carries a credential: give only s3://bucket/prefix and the keys in "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an instance role), never in a file"
        )
    return None


class Params(_Section):
    data: DataConfig = DataConfig()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    tune: TuneParams = TuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()
    cluster: ClusterParams = ClusterParams()

    @model_validator(mode="after")
    def _even_mixup_batch(self) -> "Params":
        """Mixup/CutMix pair up images: each worker's batch must be even, for train's workers and tune's trials."""
        t = self.train
        runs = [("train.workers", t.workers)] + (
            [("tune.workers", max(1, self.tune.workers))] if self.tune.enabled else []
        )
        for key, workers in runs if t.mixup > 0 or t.cutmix > 0 else []:
            if (t.batch_size // workers) % 2:
                raise ValueError(
                    f"mixup/cutmix need an even batch per worker: train.batch_size {t.batch_size} // "
                    f"{key} {workers} = {t.batch_size // workers}; make train.batch_size a multiple of "
                    f"{2 * workers}"
                )
        return self

    @model_validator(mode="after")
    def _data_exists(self) -> "Params":
        if self.data.path and not Path(self.data.path).exists():
            raise ValueError(
                f"data.path {self.data.path!r} does not exist: point it at the {self.data.name} dataset folder"
            )
        return self

    def swept(self) -> list[str]:
        """The keys of :data:`SWEPT` that params.yaml leaves null: the ones the tune stage searches when enabled (the
        split only where ``tune.splits`` offers candidates)."""
        return [k for k in SWEPT if self.value(k) is None and (k != "model.split" or self.tune.splits is not None)]

    def value(self, key: str) -> Any:
        """A dotted key's value (``train.alpha``)."""
        section, name = key.split(".")
        return getattr(getattr(self, section), name)

    def settled(self, chosen: Optional[dict[str, Any]] = None) -> "Params":
        """These params with every swept key still null set: to ``chosen``'s value (the sweep's choice, by dotted
        key), else to its default in :data:`SWEPT`: what a run trains."""
        fill = {k: (chosen or {}).get(k, SWEPT[k]) for k in self.swept()}
        if all(v is None for v in fill.values()):
            return self
        raw = self.model_dump(mode="json")
        for key, v in fill.items():
            section, name = key.split(".")
            raw[section][name] = v
        return Params.model_validate(raw)


def format_errors(err: ValidationError, source: str) -> str:
    """One line per bad key of a pydantic error: ``source: key: what is wrong (got value)``."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = (
            f" (got {redact(repr(e['input']))})"
            if e["type"] not in ("extra_forbidden", "missing") and not isinstance(e["input"], dict)
            else ""
        )
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelled? see params.yaml for the valid keys)"
        lines.append(f"{source}: {key + ': ' if key else ''}{msg}{got}")
    return "\n".join(lines)


def params_hash(params: Params, *sections: str) -> str:
    """Short stable hash of the named params sections (deterministic Ray run names: re-runs resume)."""
    dump = params.model_dump(mode="json")
    return short_hash({s: dump[s] for s in sections})


REPLACED_WHOLE = ("kwargs",)  # keys whose dict value replaces the old one: timm arguments do not merge key by key


def merges(key: str, old: Any, new: Any) -> bool:
    """Whether an override's ``new`` value for ``key`` merges into ``old`` key by key (params overrides, recipes)."""
    return isinstance(new, dict) and isinstance(old, dict) and key not in REPLACED_WHOLE


def merge_params(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override``'s sections and keys over ``base``'s, recursively (see :func:`merges`), as a new dict."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge_params(out[k], v) if merges(k, out.get(k), v) else v
    return out


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a dict (as loaded from YAML) against the schema; raise ConfigError naming every bad key. Whether
    the model can be built and run is ``adaskip.build.check_model``'s to say."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: top level must be a mapping of sections (data, model, train, ...), got {type(raw).__name__}"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def apply_tuned(params: Params, best: dict[str, Any], source: str = "results/best_config.json") -> Params:
    """``params`` settled (:meth:`Params.settled`) with the tune stage's choice ``best`` for the keys params.yaml
    leaves null; a key params.yaml fixes is never replaced: a ``best`` chosen with another value of it is stale."""
    chosen = {k: best[k.split(".")[1]] for k in SWEPT if best.get("source") == TUNED and k.split(".")[1] in best}
    for key, v in chosen.items():
        fixed = params.value(key)
        if fixed is not None and fixed != v:
            raise ConfigError(
                f"{source} was chosen with {key} = {v}, but params.yaml fixes {key} at {fixed}: re-run the tune stage "
                "(dvc repro runs it)"
            )
    try:
        return params.settled(chosen)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (run from the project root, or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_params(raw, str(path))
