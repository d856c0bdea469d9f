"""Logits and accuracy of every sub-network, sharing each stage prefix between configurations.

Sub-networks ``c`` and ``c'`` agree on every stage before the first flag where they differ, so the
activations up to that stage are the same. :func:`grid_logits` walks the binary tree of stage flags
depth first: the stem runs once, stage ``i`` runs once per distinct prefix of ``i`` flags it continues
(once full, once skipped), and each child reuses its parent's activation. For S stages the whole grid
costs ``2 + 4 + ... + 2^S = 2^(S+1) - 2`` stage passes instead of ``S * 2^S`` and one stem pass instead
of ``2^S``, while only one activation per depth (O(S)) is alive at a time.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..models import SkipConfig, unwrap
from ..models.skip import SkipLike

log = logging.getLogger(__name__)

GRID_COLUMNS = ["skip", "acc1", "acc5", "loss", "n"]


@torch.no_grad()
def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k predictions, for each k (k capped at #classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == targets.unsqueeze(1)
    return [int(hits[:, :k].any(1).sum()) for k in ks]


def _parse_prefix(prefix: Optional[str], num_stages: int) -> tuple[bool, ...]:
    if prefix is None:
        return ()
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a skip-string prefix like 'T' or 'FT', not {prefix!r}")
    bad = sorted(set(prefix.upper()) - {"T", "F"})
    if bad:
        raise ValueError(f"prefix {prefix!r} has invalid character(s) {bad}: use 'T' (skip) or 'F' (keep) per stage")
    if len(prefix) > num_stages:
        raise ValueError(f"prefix {prefix!r} has {len(prefix)} flags but the model has only {num_stages} stages")
    return tuple(c == "T" for c in prefix.upper())


def select_configs(
    model: nn.Module, configs: Optional[Iterable[SkipLike]] = None, prefix: Optional[str] = None
) -> list[SkipConfig]:
    """The requested configurations (default: all 2^S in canonical order), de-duplicated in their
    given order, restricted to those whose skip string starts with ``prefix``."""
    net = unwrap(model)
    flags = _parse_prefix(prefix, net.num_stages)
    requested = net.configs() if configs is None else [net.skip_config(c) for c in configs]
    seen, out = set(), []
    for cfg in requested:
        if cfg not in seen and cfg.flags[: len(flags)] == flags:
            seen.add(cfg)
            out.append(cfg)
    return out


def grid_logits(
    model: nn.Module, x: Tensor, configs: Optional[Iterable[SkipLike]] = None, prefix: Optional[str] = None
) -> dict[str, Tensor]:
    """Logits of every requested sub-network for the batch ``x``, keyed by skip string.

    ``configs``: skip strings / flag sequences / SkipConfigs (default: all 2^S). ``prefix``: a
    skip-string prefix (``"T"``, ``"FT"``) restricting the grid to the configurations that start with
    it, e.g. to split the grid between parallel workers, one prefix each.

    Each distinct stage prefix is computed once (depth first over the tree of stage flags, reusing
    the parent activation), so the full grid of an S-stage model costs ``2^(S+1) - 2`` stage passes
    and one stem pass. The result equals ``model(x, skip=cfg)`` for every ``cfg`` in eval mode. The
    model runs in its current mode and autograd state: wrap the call in ``torch.no_grad()`` for
    inference (as :func:`evaluate_grid` does), since otherwise every branch's graph is kept.
    The dict follows the order of ``configs`` (canonical order by default).
    """
    net = unwrap(model)
    selected = select_configs(net, configs, prefix)
    if not selected:
        return {}
    needed = {cfg.flags[:i] for cfg in selected for i in range(net.num_stages + 1)}
    out: dict[tuple[bool, ...], Tensor] = {}

    def descend(path: tuple[bool, ...], h: Tensor) -> None:
        depth = len(path)
        if depth == net.num_stages:
            out[path] = net.forward_head(h)
            return
        for skipped in (False, True):
            child = path + (skipped,)
            if child in needed:
                descend(child, net.forward_stage(depth, h, skipped))

    descend((), net.forward_stem(x))
    return {str(cfg): out[cfg.flags] for cfg in selected}


def evaluate_grid(
    model: nn.Module,
    loader: Iterable,
    configs: Optional[Iterable[SkipLike]] = None,
    prefix: Optional[str] = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Top-1/top-5 accuracy (percent), mean cross-entropy and sample count of every requested
    sub-network over ``loader`` (batches of ``(images, integer labels)``), one pass over the data.

    Moves the model to ``device`` and puts it in eval mode (restoring the previous mode afterwards);
    runs under ``torch.inference_mode``. Returns one row per configuration with columns
    ``skip, acc1, acc5, loss, n`` in the order of ``configs`` (canonical order by default).
    """
    net = unwrap(model)
    selected = select_configs(net, configs, prefix)
    device = torch.device(device)
    net.to(device)
    keys = [str(c) for c in selected]
    hits1 = dict.fromkeys(keys, 0)
    hits5 = dict.fromkeys(keys, 0)
    loss_sum = dict.fromkeys(keys, 0.0)
    n = 0
    was_training = net.training
    net.eval()
    desc = "grid" if not prefix else f"grid {prefix.upper()}*"
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress or not keys):
                images, targets = batch[0], batch[1]
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                for key, logits in grid_logits(net, images, selected).items():
                    c1, c5 = topk_correct(logits, targets, ks=(1, 5))
                    hits1[key] += c1
                    hits5[key] += c5
                    loss_sum[key] += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
                n += int(targets.shape[0])
    finally:
        net.train(was_training)
    if keys and n == 0:
        raise ValueError("evaluate_grid: the loader yielded no samples")
    rows = [
        {"skip": k, "acc1": 100.0 * hits1[k] / n, "acc5": 100.0 * hits5[k] / n, "loss": loss_sum[k] / n, "n": n}
        for k in keys
    ]
    log.debug("evaluated %d sub-network(s) on %d samples", len(keys), n)
    return pd.DataFrame(rows, columns=GRID_COLUMNS)
