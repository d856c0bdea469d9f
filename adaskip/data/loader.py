"""DataLoader construction, seeded and optionally sharded for distributed training."""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                drop_last: bool = False, distributed: Optional[tuple[int, int]] = None) -> DataLoader:
    """A DataLoader whose order (and worker RNG) follows ``seed``.

    With ``distributed=(rank, world_size)`` it uses a ``DistributedSampler(shuffle, seed)``; call
    ``loader.sampler.set_epoch(epoch)`` each epoch. Augmentations in the main process (``num_workers=0``)
    draw from torch's global RNG, so seed that too for bit-identical runs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = None
    if distributed is not None:
        rank, world_size = distributed
        if not 0 <= rank < world_size:
            raise ValueError(f"distributed=(rank, world_size) needs 0 <= rank < world_size, got {distributed}")
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0)
