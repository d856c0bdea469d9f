"""An ablation study's specification: the study file, its variants, and its cells (variant x seed) with their
validated params.

A study file (``studies/<name>/study.yaml``) names the variants, each a set of overrides of params.yaml;
a variant with ``baseline: <skip string | super | base>`` is an individually trained fixed-depth network
(cross-entropy only, the same recipe and epochs; with ``teacher:``, distilled from another sub-network trained
alone first) evaluated at that one configuration. Every other variant
is an adaptive-depth network evaluated over its whole grid. Expanding a study into cells validates each variant's
params (building its model unless told not to); :mod:`adaskip.orchestration.cells` trains and evaluates the cells,
:mod:`adaskip.ablation.stats` aggregates and compares what they measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..config import ConfigError, Params, format_errors, merge_params, params_hash, parse_params


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    overrides: dict[str, Any] = Field({}, description="params.yaml sections to override, e.g. {train: {alpha: 0.7}}")
    baseline: Optional[str] = Field(
        None, description="train only this sub-network with CE: super, base or a skip string"
    )
    teacher: Optional[str] = Field(
        None,
        description="with baseline: distil it from this sub-network (super, base or "
        "a skip string), trained alone first in the same cell (a KD baseline)",
    )

    @field_validator("baseline", "teacher")
    @classmethod
    def _skip(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if v is not None and v not in ("super", "base") and (not v or set(v.upper()) - {"T", "F"}):
            raise ValueError(f"{info.field_name} must be 'super', 'base' or a skip string of T/F flags, got {v!r}")
        return v

    @model_validator(mode="after")
    def _teacher_needs_baseline(self) -> "Variant":
        if self.teacher is not None and self.baseline is None:
            raise ValueError("teacher needs baseline: the sub-network trained alone and distilled from it")
        return self


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seeds: list[int] = Field(min_length=1)
    epochs: Optional[int] = Field(None, ge=1, description="per cell; null = train.epochs")
    reference: str = Field("adn", description="the variant compared against the baselines")
    overrides: dict[str, Any] = Field(
        {},
        description="params.yaml sections every cell overrides before its variant's "
        "own, e.g. what each cell's Ray Train run asks: {train: {workers: 8, use_gpu: true}}",
    )
    variants: dict[str, Variant] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _no_cpus_per_cell(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "cpus_per_cell" in raw:
            raise ValueError(
                "cpus_per_cell is gone: a cell is a Ray Train run that asks train.workers x "
                "train.cpus_per_worker (or one GPU each with train.use_gpu); set them under the study's "
                "overrides, e.g. overrides: {train: {workers: 1, cpus_per_worker: 1}}"
            )
        return raw

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, Variant]) -> dict[str, Variant]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9_-]+", k)]  # DVC stage names and file names
        if bad:
            raise ValueError(f"variant names may hold letters, digits, '_' and '-' only, got {bad}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if self.reference not in self.variants:
            raise ValueError(f"reference {self.reference!r} is not one of the variants {sorted(self.variants)}")
        if self.variants[self.reference].baseline is not None:
            raise ValueError(f"reference {self.reference!r} must be an adaptive-depth variant, not a baseline")
        return self


@dataclass(frozen=True)
class Cell:
    """One training run of a study: a variant at a seed, with its full validated params."""

    variant: str
    seed: int
    params: Params
    baseline: Optional[str]  # the skip string trained alone, or None for an adaptive-depth network
    teacher: Optional[str] = None  # the skip string trained alone first and distilled into the baseline

    @property
    def key(self) -> str:
        return f"{self.variant}-seed{self.seed}"


def load_study(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file (see studies/ablation/study.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
        return StudySpec.model_validate(raw or {})
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except ValidationError as e:
        raise ConfigError(format_errors(e, str(path))) from None


def results_dir(study_file: str | Path) -> Path:
    """The study's results folder, beside its study file: ``cells/`` (the cells stage's) and the compare stage's."""
    return Path(study_file).parent / "results"


def cells_dir(study_file: str | Path) -> Path:
    """Where the cells stage writes each variant's rows."""
    return results_dir(study_file) / "cells"


def cells_file(study_file: str | Path, variant: str) -> Path:
    """Where the study stage writes one variant's rows (one row per seed and configuration)."""
    return cells_dir(study_file) / f"{variant}.csv"


def cells(spec: StudySpec, base: Params, variants: Optional[list[str]] = None) -> list[Cell]:
    """Every (variant, seed) with its params validated and its model built once (``build.check_model``: bad
    overrides fail here, naming the variant); ``variants`` picks some (the study's DVC pipeline runs one stage per
    variant)."""
    from ..build import check_model  # here: a study's plan reads its spec without importing timm

    unknown = sorted(set(variants or ()) - set(spec.variants))
    if unknown:
        raise ConfigError(f"no variant {unknown} in study {spec.name!r}; it has {sorted(spec.variants)}")
    raw = base.model_dump(mode="json")
    out = []
    for name, v in spec.variants.items():
        if variants and name not in variants:
            continue
        merged = merge_params(merge_params(raw, spec.overrides), v.overrides)
        if spec.epochs:
            merged["train"]["epochs"] = spec.epochs
        source = f"study variant {name!r}"
        params = parse_params(merged, source).settled()  # no sweep in a cell: a swept key left null trains its default
        net = check_model(params, source=source)
        skip = teacher = None
        if v.baseline is not None:
            stages = net.num_stages
            skip = _baseline_skip(v.baseline, stages)
            teacher = _baseline_skip(v.teacher, stages) if v.teacher else None
        for seed in spec.seeds:
            seeded = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
            out.append(Cell(name, seed, seeded, skip, teacher))
    return out


def mlflow_tags(spec: StudySpec, base: Params) -> dict[str, str]:
    """Tags of the study's one MLflow parent run, which every variant's stage continues: another study name,
    base params or epoch count is another study, while variants and seeds are its children."""
    return {
        "adaskip.stage": "study",
        "adaskip.study": spec.name,
        "adaskip.params_hash": params_hash(base.settled(), "data", "model", "train", "evaluate"),
        "adaskip.epochs": str(spec.epochs),
    }


def _baseline_skip(baseline: str, num_stages: int) -> str:
    skip = {"super": "F" * num_stages, "base": "T" * num_stages}.get(baseline, baseline.upper())
    if len(skip) != num_stages:
        raise ConfigError(f"skip string {baseline!r} has {len(skip)} flags but the model has {num_stages} stages")
    return skip
