"""DataLoader construction, seeded and optionally sharded for distributed training, with worker processes."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from .config import DataConfig

MAX_DEFAULT_WORKERS = 4
PREFETCH_FACTOR = 2  # batches queued per worker: torch's default; more only costs (shared) memory


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(name: str, ranks: int = 1, cpus: Optional[int] = None) -> int:
    """Loader worker processes per rank when ``data.workers`` is null."""
    # The rule: 0 for digits (in-memory tensors: nothing to decode, workers only add start-up); otherwise
    # min(4, CPUs / ranks - 1): each of the ``ranks`` DDP processes sharing this machine keeps one CPU for
    # itself (the training step) and gives its share of the rest, at most 4, to decoding and augmentation.
    if name == "digits":
        return 0
    cpus = available_cpus() if cpus is None else cpus
    return max(0, min(MAX_DEFAULT_WORKERS, cpus // max(1, ranks) - 1))


def resolve_workers(cfg: DataConfig, ranks: int = 1) -> int:
    """``cfg.workers`` if set (per rank, as given), else :func:`default_workers` for ``ranks`` processes."""
    return cfg.workers if cfg.workers is not None else default_workers(cfg.name, ranks)


def _worker_seed(seed: int, distributed: Optional[tuple[int, int]]) -> int:
    """The seed of the loader's generator: ``seed``, mixed with the rank on ranks > 0 so that each rank's
    workers draw other augmentations (the DistributedSampler's order follows ``seed`` alone)."""
    if distributed is None or distributed[0] == 0:
        return seed
    return int(np.random.SeedSequence([seed, distributed[0]]).generate_state(1)[0])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    distributed: Optional[tuple[int, int]] = None,
    device: Optional[torch.device | str] = None,
) -> DataLoader:
    """A DataLoader whose order (and worker RNG) follows ``seed``.

    ``num_workers`` processes (kept across epochs) each run the dataset's ``__getitem__``, so decoding and
    augmentation happen there; torch seeds each worker's ``random``, numpy and torch RNGs from the loader's
    seeded generator, so a run is repeatable for a given ``num_workers`` (the draws differ between worker
    counts). Memory is pinned when ``device`` is CUDA. With ``distributed=(rank, world_size)`` it uses a
    ``DistributedSampler(shuffle, seed)``; call ``loader.sampler.set_epoch(epoch)`` each epoch.
    Augmentations in the main process (``num_workers=0``) draw from torch's global RNG, so seed that too
    for bit-identical runs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler: Optional[Sampler] = None
    if distributed is None and shuffle:  # its own generator: the order never depends on the worker count
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    if distributed is not None:
        rank, world_size = distributed
        if not 0 <= rank < world_size:
            raise ValueError(f"distributed=(rank, world_size) needs 0 <= rank < world_size, got {distributed}")
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    pin = device is not None and torch.device(device).type == "cuda"
    # the loader's generator seeds the workers only: one base seed per iterator, i.e. once per run when the
    # workers persist, once per epoch without workers (where it is unused)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(_worker_seed(seed, distributed)),
        pin_memory=pin,
        persistent_workers=num_workers > 0,
        prefetch_factor=PREFETCH_FACTOR if num_workers else None,
    )
