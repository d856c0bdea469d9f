"""Adaptive-depth networks over timm models: every stage has a mandatory and a skippable sub-path."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import timm
import torch
from torch import Tensor, nn

from .families import FAMILIES, Family
from .norm import SkipAwareNorm, wrap_block_norms
from .skip import SkipConfig, SkipLike

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model cannot be built as asked; ``key`` names the params.yaml key at fault (``model.name``,
    ``model.split``, ``model.kwargs``), so that a config error names it without reading the message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def default_split(blocks_per_stage: Sequence[int]) -> list[int]:
    """The paper's rule: ``mandatory = min(n - 1, (n + 1) // 2)`` blocks for a stage of n blocks."""
    return [min(n - 1, (n + 1) // 2) for n in blocks_per_stage]


def candidate_splits(blocks_per_stage: Sequence[int]) -> list[list[int]]:
    """Split points for a sweep, derived from the stage depths: the paper's rule, then one mandatory block fewer
    and one more in every stage (kept in [1, n - 1]), without repeats."""
    rule = default_split(blocks_per_stage)
    out: list[list[int]] = []
    for delta in (0, -1, 1):
        split = [min(n - 1, max(1, m + delta)) for m, n in zip(rule, blocks_per_stage)]
        if split not in out:
            out.append(split)
    return out


@dataclass
class _Stage:
    pre: Optional[nn.Module]
    mandatory: list[nn.Module]
    skippable: list[nn.Module]
    norms: list[SkipAwareNorm]


class AdaptiveDepthNet(nn.Module):
    """A timm model whose 2^S sub-networks are chosen at call time: ``model(x, skip="TTFF")``.

    The timm model lives unchanged (apart from skip-aware norms) in ``self.backbone``; the stage
    structure below only refers to its modules, so the state dict keeps timm's names.
    """

    def __init__(
        self,
        backbone: nn.Module,
        family: Family,
        split: Optional[Sequence[int]] = None,
        skip_aware_norm: bool = True,
        num_stages: int = 4,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.family = family.name
        self._family = family
        raw = family.stages(backbone, num_stages)
        sizes = [len(s.blocks) for s in raw]
        split = default_split(sizes) if split is None else list(split)
        _check_split(split, sizes)
        self.split = split
        self.skip_aware_norm = skip_aware_norm
        # What rebuilds this model (as timm's pretrained_cfg describes a timm model): set by create_model, saved as a
        # model file's "spec"; ``adaskip.models.file.build_from_spec(net.spec)`` builds the same architecture.
        self.spec: Optional[dict] = None
        self._stages = [
            _Stage(
                s.pre,
                s.blocks[:m],
                s.blocks[m:],
                [n for b in s.blocks[:m] for n in wrap_block_norms(b)] if skip_aware_norm else [],
            )
            for s, m in zip(raw, split)
        ]

    # ----- introspection -----
    @property
    def num_stages(self) -> int:
        return len(self._stages)

    @property
    def blocks_per_stage(self) -> list[tuple[int, int]]:
        """(mandatory, skippable) block counts per stage."""
        return [(len(s.mandatory), len(s.skippable)) for s in self._stages]

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def stage_depths(self) -> list[int]:
        """Blocks per stage (mandatory + skippable)."""
        return [m + s for m, s in self.blocks_per_stage]

    def configs(self) -> list[SkipConfig]:
        """All sub-networks in canonical order (super-net first, base-net last)."""
        return SkipConfig.all(self.num_stages)

    def skip_config(self, skip: SkipLike) -> SkipConfig:
        return SkipConfig.parse(skip, self.num_stages)

    def skippable_blocks(self, stage: int) -> list[nn.Module]:
        return list(self._stages[stage].skippable)

    def mandatory_blocks(self, stage: int) -> list[nn.Module]:
        return list(self._stages[stage].mandatory)

    def skip_aware_norms(self, stage: int) -> list[SkipAwareNorm]:
        return list(self._stages[stage].norms)

    def stage_pre(self, stage: int) -> Optional[nn.Module]:
        """The module shared by both paths that runs before the stage's blocks (Swin's patch merging), else None."""
        return self._stages[stage].pre

    # ----- forward -----
    def forward_stem(self, x: Tensor) -> Tensor:
        return self._family.stem(self.backbone, x)

    def forward_stage(self, index: int, h: Tensor, skipped: bool) -> Tensor:
        """Run stage ``index``: its mandatory blocks (skip-aware norm set when skipped), then, unless
        ``skipped``, its skippable blocks."""
        stage = self._stages[index]
        if stage.pre is not None:
            h = stage.pre(h)
        for norm in stage.norms:
            norm.use_skip = skipped
        for block in stage.mandatory:
            h = block(h)
        if not skipped:
            for block in stage.skippable:
                h = block(h)
        return h

    def forward_head(self, h: Tensor) -> Tensor:
        return self._family.head(self.backbone, h)

    def forward(self, x: Tensor, skip: SkipLike = None, return_features: bool = False):
        """Logits of the sub-network ``skip`` (default: super-net); with ``return_features`` also
        the list of stage outputs (for feature distillation). Not safe to call from several threads at once: the
        norm set each stage uses is module state, set per call (serve one forward at a time per instance)."""
        cfg = self.skip_config(skip)
        h = self.forward_stem(x)
        feats = []
        for i, skipped in enumerate(cfg):
            h = self.forward_stage(i, h, skipped)
            feats.append(h)
        logits = self.forward_head(h)
        return (logits, feats) if return_features else logits

    def extra_repr(self) -> str:
        return (
            f"family={self.family}, split={self.split}, blocks={self.blocks_per_stage}, "
            f"skip_aware_norm={self.skip_aware_norm}"
        )


def unwrap(model: nn.Module) -> AdaptiveDepthNet:
    """The AdaptiveDepthNet inside a DDP (or other ``.module``) wrapper."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, AdaptiveDepthNet):
        raise TypeError(f"expected an AdaptiveDepthNet (or a wrapper of one), got {type(model).__name__}")
    return inner


@torch.no_grad()
def check_input_size(model: AdaptiveDepthNet, image_size: int, in_chans: int = 3) -> None:
    """One forward pass of the super-net on a zero batch of ``image_size`` images, in eval mode (no state changes):
    a ValueError says why the model cannot run on them (a shape that does not fit, a feature map gone to zero)."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(2, in_chans, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError, IndexError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(
            f"{model.backbone.__class__.__name__} cannot run on {in_chans}x{image_size}x{image_size} "
            f"images: {first[:200]}"
        ) from None
    finally:
        model.train(was_training)


def _check_split(split: Sequence[int], sizes: Sequence[int]) -> None:
    if len(split) != len(sizes):
        raise ModelError(
            "model.split",
            f"split {list(split)} has {len(split)} entries but the model has {len(sizes)} stages "
            f"of {list(sizes)} blocks",
        )
    for i, (m, n) in enumerate(zip(split, sizes)):
        if not 1 <= m <= n - 1:
            raise ModelError(
                "model.split",
                f"split {list(split)}: stage {i} has {n} blocks, so its mandatory count must be in [1, {n - 1}] "
                f"(at least one mandatory and one skippable block), got {m}",
            )


def find_family(name: str) -> Family:
    for family in FAMILIES:
        if any(fnmatch.fnmatch(name, p) for p in family.patterns):
            return family
    raise ModelError("model.name", f"unsupported model {name!r}: supported timm families are {supported_families()}")


def supported_families() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.patterns)})" for f in FAMILIES)


def supported_models() -> list[str]:
    """Every timm model name adaskip can wrap."""
    return timm.list_models([p for f in FAMILIES for p in f.patterns])


def create_model(
    name: str,
    num_classes: int = 1000,
    split: Optional[Sequence[int]] = None,
    skip_aware_norm: bool = True,
    num_stages: int = 4,
    **timm_kwargs,
) -> AdaptiveDepthNet:
    """Create timm model ``name`` (never pretrained: nothing downloads) as an AdaptiveDepthNet.

    ``split``: mandatory blocks per stage (default: the paper's rule). ``num_stages``: only for ViT/DeiT,
    how many groups of consecutive blocks form the stages. The model's ``spec`` holds these arguments (``split``
    as resolved), what a model file saves to rebuild it.
    """
    family = find_family(name)
    if not timm.is_model(name):
        raise ModelError(
            "model.name", f"unknown timm model {name!r}: supported timm families are {supported_families()}"
        )
    if timm_kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True would download weights; load local ones with adaskip.load_timm_weights")
    try:
        backbone = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    except TypeError as e:  # an argument this timm model does not take
        raise ModelError("model.kwargs", str(e)) from None
    if not isinstance(backbone, family.cls):
        raise ModelError(
            "model.name",
            f"model {name!r} is a {type(backbone).__name__}, "
            f"not the {family.cls.__name__} that family {family.name} wraps",
        )
    net = AdaptiveDepthNet(backbone, family, split=split, skip_aware_norm=skip_aware_norm, num_stages=num_stages)
    net.spec = {
        "name": name,
        "num_classes": num_classes,
        "split": list(net.split),
        "skip_aware_norm": skip_aware_norm,
        "num_stages": num_stages,
        "kwargs": dict(timm_kwargs),
    }  # split: as resolved (null: the paper's rule)
    return net


def timm_key(model: AdaptiveDepthNet, key: str) -> str:
    """The plain timm state-dict key that ``model``'s state-dict key ``key`` is initialised from."""
    key = key.removeprefix("backbone.")
    for prefix in _skip_aware_prefixes(model):
        for part in (".full.", ".skipped."):
            if key.startswith(prefix + part):
                return prefix + "." + key[len(prefix + part) :]
    return key


def _skip_aware_prefixes(model: AdaptiveDepthNet) -> list[str]:
    return [n for n, m in model.backbone.named_modules() if isinstance(m, SkipAwareNorm)]


def load_timm_weights(model: AdaptiveDepthNet, state_dict: Mapping[str, Tensor]) -> AdaptiveDepthNet:
    """Load plain timm weights into ``model``; both norm sets start from the same values.

    Missing, unexpected and mis-shaped keys are errors (no silent partial loads).
    """
    target = model.state_dict()
    mapping = {k: timm_key(model, k) for k in target}
    missing = sorted(set(mapping.values()) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mapping.values()))
    shapes = [
        f"{k}: {tuple(state_dict[v].shape)} vs {tuple(target[k].shape)}"
        for k, v in mapping.items()
        if v in state_dict and state_dict[v].shape != target[k].shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if keys
    ]
    if problems:
        raise ValueError("timm weights do not fit this model: " + "; ".join(problems))
    model.load_state_dict({k: state_dict[v] for k, v in mapping.items()}, strict=True)
    return model
