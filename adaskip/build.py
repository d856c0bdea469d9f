"""params.yaml's model as a network: building it, and checking before any work that it can be built and run on the
data. Kept out of ``config`` so that the params schema stays a schema (validating params.yaml imports no timm)."""

from __future__ import annotations

from typing import Any, Optional

from .config import ConfigError, ModelParams, Params
from .models import AdaptiveDepthNet, ModelError, candidate_splits, check_input_size, create_model, find_family
from .models.families import FAMILIES
from .models.pretrained import PretrainedError, check_source


def timm_kwargs(model: ModelParams, image_size: int) -> dict[str, Any]:
    """model.kwargs for model.name (its family's section when kwargs is per family), with ``img_size`` =
    data.image_size for families built for one input size (ViT, Swin) unless kwargs sets it."""
    family = find_family(model.name)
    sections = set(model.kwargs) & {f.name for f in FAMILIES}
    if sections and sections != set(model.kwargs):
        raise ModelError(
            "model.kwargs",
            f"mixes family sections {sorted(sections)} with timm arguments "
            f"{sorted(set(model.kwargs) - sections)}: put the arguments inside a family's section",
        )
    kwargs = dict(model.kwargs.get(family.name) or {}) if sections else dict(model.kwargs)
    if family.fixed_size:
        kwargs.setdefault("img_size", image_size)
    return kwargs


def build_model(params: Params, num_classes: int = 2, split: Optional[list[int]] = None) -> AdaptiveDepthNet:
    """params.model as an AdaptiveDepthNet with random weights; ``split`` replaces model.split."""
    m = params.model
    return create_model(
        m.name,
        num_classes=num_classes,
        split=split or m.split,
        skip_aware_norm=m.skip_aware_norm,
        num_stages=m.num_stages,
        **timm_kwargs(m, params.data.image_size),
    )


def tune_splits(params: Params, net: Optional[AdaptiveDepthNet] = None) -> Optional[list[list[int]]]:
    """The sweep's candidate splits: tune.splits, or derived from the model's stage depths when "auto" (those of
    ``net``, params.model already built, else of a model built here)."""
    if params.tune.splits != "auto":
        return params.tune.splits
    return candidate_splits((net or build_model(params)).stage_depths)


def check_model(params: Params, splits: bool = False, source: str = "params") -> AdaptiveDepthNet:
    """Build params.model (random weights) and run one forward pass at data.image_size, check that
    model.pretrained's file or hub name exists, and with ``splits`` build each variant tune.splits lists: a model that
    cannot be built or run on the data fails here, in seconds, with one line naming the keys, not in every Ray worker.
    Validation (``parse_params``) checks the schema only; each stage that builds models calls this once, before any
    work. Returns the model built; raises ConfigError (``source: key: what is wrong``)."""
    try:
        net = _build_or_explain(params)
        _check_runs(params, net)
        if splits:
            _check_splits(params)
        return net
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def _build_or_explain(params: Params) -> AdaptiveDepthNet:
    try:
        return build_model(params)
    except ModelError as e:
        raise ValueError(f"{e.key}: {e}") from None
    except (ValueError, TypeError) as e:  # what the family says about the model (a ViT's stage count)
        raise ValueError(f"model.name: {e}") from None


def _check_runs(params: Params, net: AdaptiveDepthNet) -> None:
    """The model takes data.image_size, and model.pretrained names weights that exist (they load in training)."""
    try:
        check_input_size(net, params.data.image_size)
    except ValueError as e:
        raise ValueError(
            f"model.name / data.image_size: {e}; change data.image_size, model.name or model.kwargs"
        ) from None
    if params.model.pretrained:
        try:
            check_source(params.model.pretrained)
        except PretrainedError as e:
            raise ValueError(str(e)) from None


def _check_splits(params: Params) -> None:
    """model.split and tune.splits agree, and each listed tune.splits variant can be built (auto: valid by
    construction)."""
    listed = params.tune.splits if isinstance(params.tune.splits, list) else []
    if params.tune.enabled and params.model.split is not None and isinstance(params.tune.splits, list):
        raise ValueError(
            f"model.split: {params.model.split} fixes the split, but tune.splits lists candidates to sweep: set "
            "model.split: null to sweep them, or tune.splits: auto to keep the split fixed"
        )
    for split in listed:
        try:
            build_model(params, split=split)
        except ValueError as e:
            raise ValueError(f"tune.splits: {split}: {e}") from None
