"""Start an adaptive model from plain timm weights: a local ``.pth`` / ``.safetensors`` file or a timm hub name.

Every error is a ``PretrainedError`` naming ``model.pretrained`` (stage scripts print it as one line). The only
adaskip import is ``adaskip.errors`` (a leaf module), so this package still depends on nothing else of adaskip.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

import safetensors
import safetensors.torch
import timm
import torch
from torch import Tensor

from ..errors import AdaskipError
from .adaptive import AdaptiveDepthNet, load_timm_weights, timm_key

_log = logging.getLogger(__name__)

KEY = "model.pretrained"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
FILE_SUFFIXES = (*TORCH_SUFFIXES, ".safetensors")
HUB_PREFIXES = ("hf-hub:", "hf_hub:")


class PretrainedError(AdaskipError, ValueError):
    """``model.pretrained`` names a missing, corrupt or unfitting weights file, or hub weights that cannot download."""


def is_local(source: str) -> bool:
    """A local weights file (by its suffix, or because it exists) rather than a timm hub name."""
    return source.lower().endswith(FILE_SUFFIXES) or Path(source).expanduser().is_file()


def check_source(source: str) -> None:
    """The cheap checks run at params validation (nothing is loaded): a local file exists, a hub name is a
    timm model name or an ``hf-hub:`` id."""
    if is_local(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise PretrainedError(
                f"{KEY}: {source} does not exist: point it at a plain timm weights file "
                f"({', '.join(FILE_SUFFIXES)}) or use a timm hub name"
            )
    elif not source.startswith(HUB_PREFIXES) and not timm.is_model(source):
        raise PretrainedError(
            f"{KEY}: {source!r} is neither a local weights file ({', '.join(FILE_SUFFIXES)}) nor a "
            "timm model name (e.g. resnet34.a1_in1k or hf-hub:timm/resnet34.a1_in1k)"
        )


def load_pretrained(
    model: AdaptiveDepthNet, source: str, log: Optional[logging.Logger] = None, **timm_kwargs: Any
) -> AdaptiveDepthNet:
    """Load plain timm weights from ``source`` into ``model``; both norm sets start from them.

    ``source``: a local ``.pth``/``.pt``/``.bin`` (a state dict, or a dict holding one under ``state_dict`` or
    ``model``) or ``.safetensors`` file, else a timm hub name / ``hf-hub:`` id (``timm_kwargs``: extra
    ``timm.create_model`` arguments for it, e.g. the model's ``kwargs``). A classifier head of another class count
    (or none) is left freshly initialised, said in one INFO line; any other mismatch is an error.
    """
    log = log or _log
    check_source(source)
    state_dict = _read_file(source) if is_local(source) else _download(source, timm_kwargs)
    return _load(model, state_dict, source, log)


# ----- reading -----
def _read_file(source: str) -> dict[str, Tensor]:
    path = Path(source).expanduser()
    try:
        if path.name.lower().endswith(".safetensors"):
            obj: Any = safetensors.torch.load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        EOFError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        safetensors.SafetensorError,
    ) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise PretrainedError(f"{KEY}: {source} is not a readable weights file ({type(e).__name__}: {first})") from None
    if isinstance(obj, dict) and "spec" in obj and "state_dict" in obj:
        raise PretrainedError(
            f"{KEY}: {source} is an adaskip model file, not plain timm weights: pass the plain "
            "timm model's state_dict (torch.save(timm_model.state_dict(), ...))"
        )
    if isinstance(obj, dict) and not _is_state_dict(obj):
        obj = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not _is_state_dict(obj):
        raise PretrainedError(
            f"{KEY}: {source} holds no state dict (expected a dict of tensors, or one under 'state_dict' or 'model')"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}  # DDP-saved weights


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (skipped behind a proxy, where it says nothing)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _download(source: str, timm_kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """The hub weights as a plain timm state dict (timm adapts them to ``timm_kwargs``, e.g. image size).
    Offline only timm's local cache is tried, so it fails in a second instead of retrying for a minute."""
    from huggingface_hub import constants

    online = _hub_reachable()
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or not online
    try:
        plain = timm.create_model(source, pretrained=True, **timm_kwargs)
    except Exception as e:  # noqa: BLE001  (hub, HTTP and cache errors have no common base)
        if isinstance(e, RuntimeError) and "loading state_dict" in str(e):  # timm's strict load of what it fetched
            raise PretrainedError(
                f"{KEY}: the weights of {source!r} do not fit model.kwargs {timm_kwargs}: "
                f"{' '.join(str(e).split())[:300]}"
            ) from None
        instead = f"pass a local {' / '.join(FILE_SUFFIXES)} file of plain timm weights instead"
        if not online and isinstance(e, OSError):  # huggingface_hub's "not in the local cache"
            raise PretrainedError(f"{KEY}: cannot download timm weights {source!r} offline: {instead}") from None
        first = (str(e).splitlines() or [""])[0][:200]
        raise PretrainedError(
            f"{KEY}: cannot load timm weights {source!r} ({type(e).__name__}: {first}): {instead}"
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = saved
    return plain.state_dict()


# ----- loading -----
def head_prefixes(model: AdaptiveDepthNet) -> list[str]:
    """The timm state-dict prefixes of the classifier head (timm's ``pretrained_cfg['classifier']``)."""
    backbone = model.backbone
    names = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier")
    names = [names] if isinstance(names, str) else list(names or [])
    if not names and hasattr(backbone, "get_classifier"):
        head = backbone.get_classifier()
        names = [n for n, m in backbone.named_modules() if m is head and n]
    return names


def _load(
    model: AdaptiveDepthNet, state_dict: Mapping[str, Tensor], source: str, log: logging.Logger
) -> AdaptiveDepthNet:
    target = {timm_key(model, k): v for k, v in model.state_dict().items()}
    prefixes = head_prefixes(model)
    in_head = lambda k: any(k == p or k.startswith(p + ".") for p in prefixes)  # noqa: E731
    head = [k for k in target if in_head(k)]
    sd = dict(state_dict)
    reinit = bool(head) and any(k not in sd or sd[k].shape != target[k].shape for k in head)
    if reinit:
        src = next((tuple(sd[k].shape) for k in head if k.endswith("weight") and k in sd), None)
        sd = {k: v for k, v in sd.items() if not in_head(k)}
        sd.update({k: target[k] for k in head})  # the model's own, freshly initialised head
    try:
        load_timm_weights(model, sd)
    except ValueError as e:
        name = (getattr(model.backbone, "pretrained_cfg", None) or {}).get("architecture", model.family)
        raise PretrainedError(
            f"{KEY}: {source} does not fit the model {name} "
            f"({str(e).removeprefix('timm weights do not fit this model: ')})"
        ) from None
    if reinit:
        got = f"{src[0]} classes" if src else "none"
        log.info(
            "%s: %s loaded; its classifier head (%s) has %s, the model %d: head re-initialised",
            KEY,
            source,
            ", ".join(prefixes),
            got,
            model.num_classes,
        )
    else:
        log.info("%s: %s loaded (both norm sets start from its weights)", KEY, source)
    return model
