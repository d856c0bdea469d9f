"""The per-worker training loop, framework-agnostic: the orchestration layer passes a WorkerEnv."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import timm.data
import timm.optim
import timm.scheduler
import timm.utils
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..build import build_model
from ..config import Params
from ..console import epoch_line, progress_bars
from ..data import load_subsets, make_loader
from ..data.loader import resolve_workers
from ..errors import AdaskipError
from ..evaluation import evaluate_grid, tradeoff_auc
from ..models import AdaptiveDepthNet, SkipConfig, count_macs, load_pretrained
from ..models.diagnostics import ratio_summary, residual_ratios
from ..models.file import load_state
from .loss import DistillConfig
from ..models import unwrap
from .step import Precision, distill_step, kd_step, plain_step

log = logging.getLogger(__name__)
CONV_FAMILIES = ("resnet", "mobilenetv2")  # families whose convolutions train faster channels-last

ReportFn = Callable[[dict[str, float], Optional[dict[str, Any]]], None]


class TrainingDiverged(AdaskipError, RuntimeError):
    """The loss became NaN or infinite (bad learning rate or alpha)."""


@dataclass
class WorkerEnv:
    """What the orchestration layer gives one worker: its place in the group and how to report."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m
    report: ReportFn = lambda metrics, state: None
    resume_state: Optional[dict[str, Any]] = None
    label: str = ""  # before each epoch line: which run it is when several train at once (a study's cells)


@dataclass(frozen=True)
class FitMode:
    """What ``fit`` trains. The default: every sub-network at once, by self-distillation (the method). With
    ``alone``: only sub-network ``alone`` (a skip string; an individually trained baseline), with cross-entropy,
    or, with ``teacher``, distilled from ``teacher``'s logits (KD)."""

    alone: Optional[str] = None
    teacher: Optional[Callable[[Tensor], Tensor]] = None

    def __post_init__(self) -> None:
        if self.teacher is not None and self.alone is None:
            raise ValueError("FitMode: a teacher distils into one sub-network trained alone: set alone too")


SELF_DISTILLATION = FitMode()


def distill_config(params: Params) -> DistillConfig:
    """The loss's knobs: the train section's (validated with params.yaml), a swept key no sweep set at its default."""
    return params.settled().train


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer_and_scheduler(model: nn.Module, params: Params, epochs: int):
    t = params.train
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum
    )
    scheduler = None
    if t.scheduler != "none":
        scheduler, _ = timm.scheduler.create_scheduler_v2(
            optimizer,
            sched=t.scheduler,
            num_epochs=epochs,
            decay_milestones=t.decay_milestones,
            decay_epochs=t.decay_milestones[0] if t.decay_milestones else 30,
            warmup_epochs=t.warmup_epochs,
        )
    return optimizer, scheduler


def memory_format(params: Params, net: AdaptiveDepthNet) -> torch.memory_format:
    """channels-last for a convolutional family when train.channels_last is on, else contiguous (vit/swin)."""
    conv = params.train.channels_last and net.family in CONV_FAMILIES
    return torch.channels_last if conv else torch.contiguous_format


def make_mixup(params: Params, num_classes: int) -> Optional[timm.data.Mixup]:
    """timm Mixup/CutMix per train.mixup and train.cutmix (None when both are 0). Its soft targets carry
    train.label_smoothing, which ``cross_entropy`` then leaves alone (it smooths hard labels only)."""
    t = params.train
    if t.mixup <= 0 and t.cutmix <= 0:
        return None
    return timm.data.Mixup(
        mixup_alpha=t.mixup,
        cutmix_alpha=t.cutmix,
        prob=t.mixup_prob,
        switch_prob=t.mixup_switch_prob,
        label_smoothing=t.label_smoothing,
        num_classes=num_classes,
    )


def make_ema(
    net: AdaptiveDepthNet, params: Params, resume_state: Optional[dict[str, Any]]
) -> Optional[timm.utils.ModelEmaV3]:
    """timm ModelEmaV3 of ``net`` per train.ema (None when off), restored from a resumed checkpoint's ``"ema"``."""
    t = params.train
    if not t.ema:
        return None
    ema = timm.utils.ModelEmaV3(net, decay=t.ema_decay, use_warmup=t.ema_warmup)
    if resume_state is not None and resume_state.get("ema") is not None:
        load_state(ema.module, resume_state["ema"], "resume checkpoint (ema)")
    elif resume_state is not None:
        log.warning("the resume checkpoint holds no EMA weights: the EMA restarts from the resumed weights")
    log.info(
        "train.ema: validation metrics and the final model are the EMA weights' (decay %g%s)",
        t.ema_decay,
        ", warm-up" if t.ema_warmup else "",
    )
    return ema


def _step_fn(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Params,
    precision: Precision,
    scaler: Optional[torch.amp.GradScaler],
    mode: FitMode,
) -> Callable[[Tensor, Tensor], tuple[dict[str, float], float]]:
    """The step ``fit`` runs on each batch, returning (its metrics, its loss): self-distillation, or sub-network
    ``mode.alone`` alone with KD from ``mode.teacher`` or with CE (the baselines get the same recipe)."""
    cfg = distill_config(params)

    def step(images: Tensor, targets: Tensor) -> tuple[dict[str, float], float]:
        if mode.alone is None:
            out = distill_step(model, images, targets, optimizer, cfg, precision, scaler)
            return out, out["total"]
        if mode.teacher is not None:
            out = kd_step(model, mode.teacher, images, targets, optimizer, cfg, mode.alone, precision, scaler)
        else:
            out = plain_step(
                model,
                images,
                targets,
                optimizer,
                precision,
                scaler,
                skip=mode.alone,
                label_smoothing=cfg.label_smoothing,
            )
        return out, out["loss"]

    return step


def _all_sum(values: list[float], env: WorkerEnv) -> list[float]:
    if env.world_size == 1 or not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def validate(model: AdaptiveDepthNet, loader, env: WorkerEnv, macs: dict[str, int]) -> dict[str, float]:
    """Val accuracy of every sub-network (prefix-shared), summed over ranks, and the trade-off objective."""
    grid = evaluate_grid(model, loader, device=env.device, progress=False)
    sums = _all_sum([*(grid.acc1 * grid.n / 100), *(grid.acc5 * grid.n / 100), *grid.n], env)
    k = len(grid)
    n = np.array(sums[2 * k :])
    acc1 = pd.Series(100 * np.array(sums[:k]) / np.maximum(n, 1), index=grid.skip)
    acc5 = pd.Series(100 * np.array(sums[k : 2 * k]) / np.maximum(n, 1), index=grid.skip)
    s = model.num_stages
    sup, base = str(SkipConfig.super_net(s)), str(SkipConfig.base_net(s))
    out = {
        "val_acc_super": acc1[sup],
        "val_acc_base": acc1[base],
        "val_acc5_super": acc5[sup],
        "val_acc5_base": acc5[base],
        "val_acc_mean": acc1.mean(),
        "objective": tradeoff_auc([macs[c] for c in acc1.index], acc1.values),
    }
    return {k: float(v) for k, v in out.items()}  # plain floats: numpy scalars fail weights_only loading


def diagnostics(net: AdaptiveDepthNet, loader, env: WorkerEnv, skip: Optional[str] = None) -> dict[str, float]:
    """||block(h) - h|| / ||h|| per block on one validation batch (the paper's Figure 3), and its mean over
    mandatory and over skippable blocks."""
    ratios = residual_ratios(net, next(iter(loader))[0].to(env.device), skip)
    return {**ratio_summary(ratios), **{f"ratio.{k}": v for k, v in ratios.items()}}


@dataclass
class _Run:
    """What one training run holds from set-up to its last epoch."""

    net: AdaptiveDepthNet  # the model itself (unwrapped)
    model: nn.Module  # ``net`` as the worker trains it (DDP-wrapped on several ranks)
    ema: Optional[Any]  # timm's ModelEmaV3, with train.ema
    optimizer: torch.optim.Optimizer
    scheduler: Optional[Any]
    macs: dict[str, int]  # every sub-network's, at the data's image size
    fmt: torch.memory_format
    train_loader: Any
    val_loader: Any
    mixup: Optional[timm.data.Mixup]
    step: Callable[[Tensor, Tensor], tuple[dict[str, float], float]]
    start: int  # the first epoch to train (after a resume)

    @property
    def eval_net(self) -> AdaptiveDepthNet:
        """The weights validated and shipped: the EMA's with train.ema."""
        return self.ema.module if self.ema is not None else self.net


def fit(
    params: Params, env: WorkerEnv, epochs: Optional[int] = None, mode: FitMode = SELF_DISTILLATION
) -> dict[str, float]:
    """Train per ``params`` for ``epochs`` (default train.epochs), reporting metrics and a checkpoint
    state each epoch through ``env.report`` (``"model"``: the raw weights; with train.ema also ``"ema"``, the
    weights validated and to ship; ``"spec"``: the model's spec, its split as resolved). ``mode`` says what is
    trained: every sub-network by self-distillation (default), or one sub-network alone (see FitMode)."""
    epochs = epochs or params.train.epochs
    run = _set_up(params, env, epochs, mode)
    metrics: dict[str, float] = {}
    for epoch in range(run.start, epochs):
        started = time.perf_counter()
        metrics = _train_epoch(run, env, epoch, epochs)
        if run.scheduler is not None:
            run.scheduler.step(epoch + 1)
        metrics.update(validate(run.eval_net, run.val_loader, env, run.macs))
        metrics.update(diagnostics(run.eval_net, run.val_loader, env, mode.alone))
        metrics.update(epoch=epoch + 1, lr=run.optimizer.param_groups[0]["lr"])
        if env.rank == 0:  # one line per epoch; every metric (per-block ratios too) goes to MLflow and DEBUG
            log.info("%s%s", env.label, epoch_line(epoch + 1, epochs, metrics, time.perf_counter() - started))
        log.debug("epoch %d/%d rank %d %s", epoch + 1, epochs, env.rank, {k: round(v, 4) for k, v in metrics.items()})
        env.report(metrics, _state(run, epoch) if env.rank == 0 else None)
    return metrics


def _set_up(params: Params, env: WorkerEnv, epochs: int, mode: FitMode) -> _Run:
    """The seeded model (resumed, or from pretrained weights), its optimizer, EMA, loaders and step, in that order
    (the order the random generators are drawn in: a resumed or repeated run is the same run)."""
    seed_everything(params.train.seed)
    subsets = load_subsets(params.data)
    net = build_model(params, num_classes=subsets.num_classes)
    size = (subsets.in_chans, params.data.image_size, params.data.image_size)
    macs = {str(c): count_macs(net, c, size) for c in net.configs()}
    fmt = memory_format(params, net)
    net.to(env.device, memory_format=fmt)
    optimizer, scheduler = _optimizer_and_scheduler(net, params, epochs)
    start = _resume_or_pretrained(net, optimizer, scheduler, params, env)
    ema = make_ema(net, params, env.resume_state)  # after the resumed or pretrained weights are in
    model = env.wrap(net)
    train_loader, val_loader = _loaders(params, env, subsets)
    mixup = make_mixup(params, subsets.num_classes)
    precision = Precision(params.train.precision)
    step = _step_fn(model, optimizer, params, precision, precision.scaler(env.device), mode)
    return _Run(net, model, ema, optimizer, scheduler, macs, fmt, train_loader, val_loader, mixup, step, start)


def _resume_or_pretrained(net: AdaptiveDepthNet, optimizer, scheduler, params: Params, env: WorkerEnv) -> int:
    """The first epoch to train: after the resume checkpoint's (its weights, optimizer and scheduler loaded), else 0
    (with model.pretrained's weights loaded on a fresh start; every rank loads the same file)."""
    state = env.resume_state
    if state is None:
        if params.model.pretrained:
            load_pretrained(net, params.model.pretrained, log, **net.spec["kwargs"])
        return 0
    load_state(net, state["model"], "resume checkpoint")
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    log.debug("resuming from epoch %d", int(state["epoch"]) + 1)  # rank 0 of a Ray Train run says it, naming the run
    return int(state["epoch"]) + 1


def _loaders(params: Params, env: WorkerEnv, subsets) -> tuple[Any, Any]:
    """This rank's train and validation loaders. Each rank builds its own: an explicit data.workers is per rank, the
    default shares this machine's CPUs among the world_size ranks (assumed on one machine; on several nodes set
    data.workers)."""
    shard = (env.rank, env.world_size) if env.world_size > 1 else None
    workers = resolve_workers(params.data, ranks=env.world_size)
    common = {"distributed": shard, "num_workers": workers, "device": env.device}
    bs = max(1, params.train.batch_size // env.world_size)
    train = make_loader(subsets.train, bs, shuffle=True, seed=params.train.seed, drop_last=True, **common)
    val = make_loader(subsets.val, params.evaluate.batch_size, shuffle=False, seed=0, **common)
    return train, val


def _train_epoch(run: _Run, env: WorkerEnv, epoch: int, epochs: int) -> dict[str, float]:
    """One pass over this rank's training batches: its mean losses (``train_<loss>``) and accuracies
    (``train_acc_<net>``)."""
    if env.world_size > 1:
        run.train_loader.sampler.set_epoch(epoch)
    run.model.train()
    sums: dict[str, float] = {}
    seen, global_step = 0, epoch * len(run.train_loader)
    bar = tqdm(
        run.train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=env.rank != 0 or not progress_bars(), leave=False
    )
    for images, targets in bar:
        images = images.to(env.device, non_blocking=True, memory_format=run.fmt)
        targets = targets.to(env.device, non_blocking=True)
        if run.mixup is not None:
            images, targets = run.mixup(images, targets)  # soft targets
        out, loss = run.step(images, targets)
        global_step += 1
        if run.ema is not None:
            run.ema.update(run.net, step=global_step)
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss} at epoch {epoch + 1}: lower train.lr or check train.alpha")
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v * (1 if k.endswith("correct") else len(images))
        seen += len(images)
        bar.set_postfix(loss=f"{loss:.3f}")
    return {
        ("train_acc_" + k.split("_")[0] if k.endswith("correct") else "train_" + k): v
        / seen
        * (100 if k.endswith("correct") else 1)
        for k, v in sums.items()
    }


def _state(run: _Run, epoch: int) -> dict[str, Any]:
    """Rank 0's checkpoint state after ``epoch``: what a resumed run and the model file are made from."""
    state = {
        "epoch": epoch,
        "model": unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "spec": run.net.spec,
        "macs": run.macs,
    }
    if run.ema is not None:
        state["ema"] = run.ema.module.state_dict()
    return state
