"""The evaluation grid as parallel Ray tasks: each task evaluates one subtree of stage prefixes."""

from __future__ import annotations

import itertools
import math
from typing import Any, Optional

import pandas as pd
import ray
import torch
from tqdm.auto import tqdm

from ..console import progress_bars
from ..config import Params
from ..errors import AdaskipError
from ..data import load_subsets, make_loader
from ..data.base import Subsets
from ..data.loader import resolve_workers
from ..evaluation import (
    complexity_table,
    evaluate_grid,
    latency_long_table,
    latency_wide,
    recalibrated_grid,
    select_configs,
    summarise,
)
from ..models import AdaptiveDepthNet
from .storage import Storage


class EvaluationError(AdaskipError):
    """The evaluation grid cannot run as configured (e.g. GPUs asked for on a cluster without any)."""


def prefixes(num_stages: int, parallelism: int) -> list[str]:
    """Stage-flag prefixes that split the 2^S configurations into ``<= parallelism`` equal subtrees."""
    depth = min(num_stages, max(0, int(math.log2(max(1, parallelism)))))
    return ["".join(p) for p in itertools.product("FT", repeat=depth)]


def grid_accuracy(
    model: AdaptiveDepthNet, subsets: Subsets, p: Params, configs: Optional[list], recalibrate: bool
) -> pd.DataFrame:
    """Accuracy of ``configs`` on the test split; with ``recalibrate`` every intermediate configuration after
    re-estimating its BN statistics on training batches (``evaluate.recalibrate_bn``)."""
    device = next(model.parameters()).device  # the GPU with evaluate.use_gpu
    workers = resolve_workers(p.data, ranks=p.evaluate.parallelism)  # the default shares the CPUs among the tasks
    loader = make_loader(subsets.test, p.evaluate.batch_size, shuffle=False, seed=0, num_workers=workers)
    if not recalibrate:
        return evaluate_grid(model, loader, configs, device=device, progress=False)
    calibration = make_loader(subsets.train, p.evaluate.batch_size, shuffle=True, seed=0, num_workers=workers)
    return recalibrated_grid(model, loader, calibration, configs, batches=p.evaluate.recalibrate_batches, device=device)


def _evaluate_subtree(model_file: dict[str, Any], p: Params, prefix: str) -> pd.DataFrame:
    """One task: accuracy (prefix-shared), MACs, params and latency of the configurations under ``prefix``; one
    row per configuration, the latency columns as :func:`adaskip.evaluation.latency_wide` names them."""
    from ..models.file import build_from_spec

    torch.set_num_threads(p.evaluate.task_cpus())
    model = build_from_spec(model_file["spec"])
    model.load_state_dict(model_file["state_dict"])
    subsets = load_subsets(p.data)
    configs = select_configs(model, None, prefix or None)
    size = (subsets.in_chans, p.data.image_size, p.data.image_size)
    cost = complexity_table(model, configs, size)  # counted on the CPU
    if p.evaluate.use_gpu:
        model = model.to("cuda")  # Ray gave this task one GPU (evaluate.use_gpu)
    acc = grid_accuracy(model, subsets, p, configs, p.evaluate.recalibrate_bn)
    return acc.merge(cost, on="skip").merge(subtree_latency(model, configs, size, p), on="skip")


def subtree_latency(model: AdaptiveDepthNet, configs: list, size: tuple[int, ...], p: Params) -> pd.DataFrame:
    """Wide latency columns of ``configs`` measured in this process, on the model's device."""
    e = p.evaluate
    long = latency_long_table(
        model, configs, size, e.latency_batch_sizes, e.latency_threads, e.latency_warmup, e.latency_reps
    )
    return latency_wide(long)


def evaluate_parallel(model_file: dict[str, Any], params: Params, done: Optional[Storage] = None) -> pd.DataFrame:
    """All 2^S sub-networks on the test split, in parallel Ray tasks; Pareto front marked. With ``done`` each
    finished subtree is saved there and a re-run (after an interruption) evaluates only the missing ones."""
    subtrees = prefixes(len(model_file["spec"]["split"]), params.evaluate.parallelism)
    saved = {p: f"{p or 'all'}.csv" for p in subtrees} if done else {}
    kept = [p for p, f in saved.items() if done.exists(f)]
    finished = [done.read_csv(saved[p]) for p in kept]
    gpus = 1 if params.evaluate.use_gpu else 0
    if gpus and ray.cluster_resources().get("GPU", 0) < 1:  # the tasks would wait for a GPU forever
        raise EvaluationError(
            "evaluate.use_gpu is true but the Ray cluster has no GPU: attach GPU nodes "
            "(RAY_ADDRESS) or set evaluate.use_gpu: false"
        )
    task = ray.remote(num_cpus=params.evaluate.task_cpus(), num_gpus=gpus)(_evaluate_subtree)
    ref = ray.put(model_file)
    pending = {task.remote(ref, params, p): p for p in subtrees if p not in kept}
    with tqdm(
        total=len(subtrees), initial=len(finished), desc="evaluation grid", unit="subtree", disable=not progress_bars()
    ) as bar:
        while pending:
            [ready], _ = ray.wait(list(pending))
            part, prefix = ray.get(ready), pending.pop(ready)
            if done:
                done.write_csv(saved[prefix], part)
            finished.append(part)
            bar.update()
    table = pd.concat(finished, ignore_index=True)
    return summarise(
        table.drop(columns=["macs", "params", "skipped_stages"]), table[["skip", "macs", "params", "skipped_stages"]]
    )
