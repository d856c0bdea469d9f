"""Export one sub-network of a trained adaptive-depth model as a standalone network.

The skip string picks the sub-network (``TTFF``: stages 1-2 skip their skippable blocks). The export
deep-copies the timm backbone, removes the skipped stages' skippable blocks (each becomes an ``nn.Identity``
placeholder, so timm's containers keep their numbering and the family's stem/head functions still see the
structure they expect) and replaces every :class:`SkipAwareNorm` by the plain norm its stage uses in that
sub-network (``skipped`` in a skipped stage, ``full`` otherwise). What is left, :class:`SubNetwork`, is a plain
``nn.Module`` with no skip logic; its state dict has timm's keys (``backbone.layer1.0.bn1.weight``).

Formats:
  ``torch``        ``torch.save`` of ``{"format", "config", "state_dict"}``; :func:`load_exported` rebuilds it
                   (needs adaskip and timm; loads with ``weights_only=True``).
  ``torchscript``  ``torch.jit.trace`` of the sub-network, loadable with ``torch.jit.load`` alone.
  ``onnx``         ``torch.onnx.export`` (TorchScript-based exporter, ``dynamo=False``: works offline without
                   onnxscript), input ``input`` / output ``logits``, dynamic batch dimension.

Every export is verified before it is kept: the written file is loaded back in this process and its logits on
a random batch (of another batch size than the one traced) are compared with ``model(x, skip=skip)`` in eval
mode; a difference above ``atol`` times the logit scale raises :class:`ExportVerificationError` and, the write
being atomic, leaves no output file.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .console import si
from .errors import AdaskipError
from .files import atomic_path
from .models import AdaptiveDepthNet, SkipAwareNorm, SkipConfig, check_input_size, count_macs
from .models.families import Family

log = logging.getLogger(__name__)

FORMATS = ("torch", "torchscript", "onnx")
FILE_FORMAT = "adaskip-subnetwork-v1"  # the "format" key of a torch-format export
DEFAULT_OPSET = 17  # native LayerNormalization (17); scaled_dot_product_attention needs >= 14
# Verification tolerance, relative to the logit scale (max |logit|, at least 1). ONNX Runtime's default optimisation
# level runs convolutions in a blocked layout (NCHWc) that sums in another order: on a barely trained MobileNetV2 a
# correct file differs by a few 1e-4 of the scale on a random batch; a wrong norm set or block differs by 1e-1 or more.
ATOL = 1e-3
_TRACE_BATCH, _VERIFY_BATCH = 2, 3  # verification runs another batch size than the trace: the batch must be dynamic


class ExportError(AdaskipError, ValueError):
    """A sub-network cannot be exported as asked (bad skip string, format, opset or image size)."""


class ExportVerificationError(ExportError):
    """The written export does not compute what ``model(x, skip=skip)`` computes; no file was kept."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    fmt: str
    skip: str
    image_size: int
    macs: int  # multiply-accumulates of one image at image_size
    params: int  # parameters of the exported network
    max_abs_diff: float  # max |exported - model(x, skip)| over the verification batch
    tolerance: float  # the bound max_abs_diff was checked against

    def line(self) -> str:
        return (
            f"exported {self.skip} ({self.fmt}) -> {self.path}: {si(self.macs)}MACs at {self.image_size} px, "
            f"{si(self.params)}params, max |diff| {self.max_abs_diff:.2e} vs model(x, skip={self.skip!r}) "
            f"(tolerance {self.tolerance:.1e})"
        )


# ----------------------------------------------------------------------------------------------------------------
# The plain sub-network
# ----------------------------------------------------------------------------------------------------------------
def _plain_norm(norm: SkipAwareNorm, skipped: bool) -> nn.Module:
    """The norm set a mandatory block runs when its stage is (``skipped``) or is not skipped."""
    return norm.skipped if skipped else norm.full


def _replace_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


class SubNetwork(nn.Module):
    """One sub-network of an AdaptiveDepthNet as a plain module: stem, the kept blocks of every stage, head.

    ``backbone`` must already be pruned (:meth:`from_adaptive`): no SkipAwareNorm left, the skipped stages'
    skippable blocks replaced by ``nn.Identity``. The forward pass calls the family's own stem and head functions
    and timm's own blocks, in timm's order; which blocks run is fixed at construction.
    """

    def __init__(
        self, backbone: nn.Module, family: Family, split: Sequence[int], skip: SkipConfig, num_stages: int
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.family = family.name
        self._family = family
        self.split = list(split)
        self.skip = str(skip)
        self.num_stages = num_stages
        stages = family.stages(backbone, num_stages)
        if len(stages) != len(skip) or len(stages) != len(self.split):
            raise ExportError(
                f"{family.name} backbone has {len(stages)} stages but skip {self.skip!r} and split "
                f"{self.split} describe {len(skip)} and {len(self.split)}"
            )
        # plain lists of timm's modules (registered under backbone only, so the state dict keeps timm's keys)
        self._stages: list[tuple[Optional[nn.Module], list[nn.Module]]] = [
            (s.pre, list(s.blocks[:m]) if skipped else list(s.blocks))
            for s, m, skipped in zip(stages, self.split, skip)
        ]
        left = [n for n, mod in backbone.named_modules() if isinstance(mod, SkipAwareNorm)]
        if left:
            raise ExportError(
                f"backbone still has skip-aware norms ({', '.join(left[:3])}): build it with SubNetwork.from_adaptive"
            )

    @classmethod
    def from_adaptive(cls, net: AdaptiveDepthNet, skip: Any, copy_modules: bool = True) -> "SubNetwork":
        """Sub-network ``skip`` of ``net`` (eval mode). ``copy_modules=False`` prunes ``net``'s own backbone in
        place (``net`` is unusable afterwards): only for a model built just for this."""
        cfg = parse_skip(net, skip)
        backbone = copy.deepcopy(net.backbone) if copy_modules else net.backbone
        family: Family = net._family
        stages = family.stages(backbone, net.num_stages)
        names = {id(m): n for n, m in backbone.named_modules()}
        for stage, m, skipped in zip(stages, net.split, cfg):
            for block in stage.blocks[:m]:
                for name, mod in list(block.named_modules()):
                    if isinstance(mod, SkipAwareNorm):
                        _replace_child(block, name, _plain_norm(mod, skipped))
            if skipped:
                for block in stage.blocks[m:]:
                    _replace_child(backbone, names[id(block)], nn.Identity())
        return cls(backbone, family, net.split, cfg, net.num_stages).eval()

    def forward(self, x: Tensor) -> Tensor:
        h = self._family.stem(self.backbone, x)
        for pre, blocks in self._stages:
            if pre is not None:
                h = pre(h)
            for block in blocks:
                h = block(h)
        return self._family.head(self.backbone, h)

    @property
    def blocks_per_stage(self) -> list[int]:
        return [len(blocks) for _, blocks in self._stages]

    def extra_repr(self) -> str:
        return f"family={self.family}, skip={self.skip}, blocks={self.blocks_per_stage}"


def parse_skip(net: AdaptiveDepthNet, skip: Any) -> SkipConfig:
    """SkipConfig of ``skip`` for ``net``; a bad one is one ExportError line naming the expected length."""
    s = net.num_stages
    try:
        return net.skip_config(skip)
    except ValueError as e:
        raise ExportError(
            f"bad skip {skip!r}: expected {s} characters, one 'T' (skip) or 'F' (keep) per stage of "
            f"this {s}-stage {net.family} model, e.g. {'F' * s!r} (super-net) or {'T' * s!r} "
            f"(base-net) ({e})"
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# The torch format
# ----------------------------------------------------------------------------------------------------------------
def build_exported(config: dict[str, Any]) -> SubNetwork:
    """The architecture of a torch-format export (random weights) from its ``config``."""
    from .models.file import build_from_spec

    spec = {k: config[k] for k in ("name", "num_classes", "split", "skip_aware_norm", "num_stages", "kwargs")}
    return SubNetwork.from_adaptive(build_from_spec(spec), config["skip"], copy_modules=False)


def load_exported(path: str | os.PathLike) -> SubNetwork:
    """Rebuild a torch-format export (in eval mode); a missing, corrupt or foreign file is a CheckpointError."""
    from .models.file import CheckpointError, read_torch_file

    obj = read_torch_file(path, "exported network")
    if not isinstance(obj, dict) or obj.get("format") != FILE_FORMAT or "config" not in obj or "state_dict" not in obj:
        raise CheckpointError(
            f"{path} is not an adaskip torch-format export (expected format {FILE_FORMAT!r} with "
            "'config' and 'state_dict'; TorchScript files load with torch.jit.load)"
        )
    try:
        sub = build_exported(obj["config"])
        sub.load_state_dict(obj["state_dict"], strict=True)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"exported network {path} cannot be rebuilt: {' '.join(str(e).split())[:300]}") from None
    return sub.eval()


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------
def export_subnetwork(
    model_path_or_net: str | os.PathLike | AdaptiveDepthNet,
    skip: str,
    fmt: str,
    out: str | os.PathLike,
    image_size: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
    atol: float = ATOL,
) -> ExportResult:
    """Export sub-network ``skip`` of a model file (``models/model.pt``) or an AdaptiveDepthNet to ``out`` in
    format ``fmt`` (torch | torchscript | onnx), verify the written file, and return its MACs, parameters and
    max abs difference from ``model(x, skip=skip)``.

    ``image_size``: the input resolution (default: the model's own, when its file or architecture records it, as
    ViT/Swin do). The torch format stores the architecture spec: a model file's, or an in-memory model's
    ``net.spec`` (set by ``adaskip.models.create_model``). The adaptive model is not modified.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _check_opset(opset)
        require_onnx()
    with prepared(model_path_or_net, image_size) as (net, file, size, in_chans):
        spec = file.get("spec")
        if fmt == "torch" and spec is None:
            raise ExportError(
                "the torch format stores the architecture spec, and this model has none (net.spec is "
                "None: not built by adaskip.models.create_model): export its model file instead"
            )
        cfg = parse_skip(net, skip)
        sub = SubNetwork.from_adaptive(net, cfg)
        params = sum(p.numel() for p in sub.parameters())
        macs = count_macs(net, cfg, (in_chans, size, size))
        _check_recorded(file, cfg, macs, size)
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(_TRACE_BATCH, in_chans, size, size, generator=gen)
        x = torch.randn(_VERIFY_BATCH, in_chans, size, size, generator=gen)
        with torch.no_grad():
            ref = net(x, skip=cfg)
        config = {**(spec or {}), "split": list(net.split), "skip": str(cfg), "image_size": size, "in_chans": in_chans}
        out = Path(out)
        with atomic_path(out) as tmp:
            load = _WRITERS[fmt](sub, tmp, example=example, config=config, opset=opset)
            with torch.no_grad():
                got = load(tmp, x)
            diff, tol = compare(got, ref, atol)
            if not diff <= tol:  # also NaN
                raise ExportVerificationError(
                    f"the {fmt} export of {cfg} differs from model(x, skip={str(cfg)!r}): max |diff| {diff:.3g} > "
                    f"tolerance {tol:.3g} on a random {tuple(x.shape)} batch; nothing written to {out}"
                )
    result = ExportResult(out, fmt, str(cfg), size, macs, params, diff, tol)
    log.info("%s", result.line())
    return result


@contextmanager
def prepared(
    model_path_or_net: str | os.PathLike | AdaptiveDepthNet, image_size: Optional[int]
) -> Iterator[tuple[AdaptiveDepthNet, dict[str, Any], int, int]]:
    """The model to export (a model file's, or the given one: on the CPU and in eval mode while the block runs), its
    file's dict, the image size and the input channels, checked to run at that size."""
    from .models.file import load_model

    if isinstance(model_path_or_net, AdaptiveDepthNet):
        net, file = model_path_or_net, {"spec": model_path_or_net.spec}
    else:
        net, file = load_model(model_path_or_net)  # CheckpointError: missing / corrupt / another architecture
    size, in_chans = _resolve_image_size(net, file, image_size), _in_chans(net)
    if next(net.parameters()).device.type != "cpu":
        net = copy.deepcopy(net).cpu()
    was_training = net.training
    net.eval()
    try:
        try:
            check_input_size(net, size, in_chans)
        except ValueError as e:
            raise ExportError(f"image size {size}: {e}") from None
        yield net, file, size, in_chans
    finally:
        net.train(was_training)


def _check_recorded(file: dict[str, Any], cfg: SkipConfig, macs: int, size: int) -> None:
    recorded = (file.get("macs") or {}).get(str(cfg))
    if recorded is not None and recorded != macs:
        log.warning(
            "%s: %d MACs at %d px, but the model file records %d (counted at its training size): "
            "is --image-size the data.image_size it was trained on?",
            cfg,
            macs,
            size,
            recorded,
        )


def compare(got: Tensor, ref: Tensor, atol: float) -> tuple[float, float]:
    """(max |got - ref|, the bound it must stay within: ``atol`` times the logit scale, at least 1)."""
    if tuple(got.shape) != tuple(ref.shape):
        raise ExportVerificationError(f"the export returns shape {tuple(got.shape)}, model(x, skip) {tuple(ref.shape)}")
    diff = (got.float() - ref.float()).abs().max().item()
    scale = ref.abs().max().item()
    return diff, atol * max(1.0, scale)


def _write_torch(sub: SubNetwork, tmp: Path, config: dict[str, Any], **_: Any) -> Callable[[Path, Tensor], Tensor]:
    torch.save({"format": FILE_FORMAT, "config": config, "state_dict": sub.state_dict()}, tmp)
    return lambda path, x: load_exported(path)(x)


def _write_torchscript(sub: SubNetwork, tmp: Path, example: Tensor, **_: Any) -> Callable[[Path, Tensor], Tensor]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings: the reload below checks what the trace computes
        try:
            traced = torch.jit.trace(sub, (example,), check_trace=False)
        except Exception as e:
            raise ExportError(f"torch.jit.trace failed: {first_line(e)}") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save/load "deprecated": they still work
        torch.jit.save(traced, str(tmp))

    def run(path: Path, x: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")(x)

    return run


def _write_onnx(sub: SubNetwork, tmp: Path, example: Tensor, opset: int, **_: Any) -> Callable[[Path, Tensor], Tensor]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy-exporter DeprecationWarning and TracerWarnings
        try:
            torch.onnx.export(
                sub,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as e:
            raise ExportError(f"torch.onnx.export (opset {opset}) failed: {first_line(e)}") from e

    def run(path: Path, x: Tensor) -> Tensor:
        try:
            (logits,) = ort_session(str(path), torch.get_num_threads()).run(["logits"], {"input": x.numpy()})
        except Exception as e:
            raise ExportVerificationError(f"onnxruntime cannot run the exported model: {first_line(e)}") from e
        return torch.from_numpy(logits)

    return run


def ort_session(model: str | bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session of ``model`` (a path or the serialized graph) with ``threads`` intra-op threads,
    one inter-op thread, warnings off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


_WRITERS = {"torch": _write_torch, "torchscript": _write_torchscript, "onnx": _write_onnx}


def first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _check_opset(opset: int) -> None:
    from torch.onnx._constants import ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as top

    if not isinstance(opset, int) or not max(ONNX_MIN_OPSET, 14) <= opset <= top:
        raise ExportError(
            f"ONNX opset {opset!r} not supported: use {max(ONNX_MIN_OPSET, 14)}..{top} (attention "
            f"needs 14, native LayerNormalization 17; default {DEFAULT_OPSET})"
        )


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter uses it)
        import onnxruntime  # noqa: F401  (verification)
    except ImportError as e:
        raise ExportError(
            f"the onnx format needs the onnx and onnxruntime packages ({e}): pip install onnx "
            "onnxruntime (pinned in requirements.lock)"
        ) from None


def _in_chans(net: AdaptiveDepthNet) -> int:
    """Input channels: those of the backbone's first convolution (the stem or the patch embedding)."""
    first = next((m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def _resolve_image_size(net: AdaptiveDepthNet, file: dict[str, Any], image_size: Optional[int]) -> int:
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ExportError(f"image size must be a positive integer, not {image_size!r}")
        return image_size
    candidates = [  # what the train stage recorded, else what a fixed-size family (ViT, Swin) was built for
        file.get("image_size"),
        ((file.get("spec") or {}).get("kwargs") or {}).get("img_size"),
        getattr(getattr(net.backbone, "patch_embed", None), "img_size", None),
    ]
    for value in candidates:
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            if len(set(value)) != 1:
                raise ExportError(
                    f"the model is built for non-square {tuple(value)} images: only square inputs "
                    "export; pass --image-size"
                )
            value = value[0]
        return int(value)
    raise ExportError(
        f"the image size is not recorded for this {net.family} model (it runs at any size): pass "
        "--image-size / image_size=, the data.image_size it was trained on"
    )


# ----------------------------------------------------------------------------------------------------------------
# CLI: `adaskip export`
# ----------------------------------------------------------------------------------------------------------------
