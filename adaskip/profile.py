"""``adaskip profile``: every sub-network's latency on this machine, in the long form of ``results/latency.csv``
(one row per sub-network x batch size x thread count; tables of several machines concatenate), for ``adaskip select
--latency`` and for serving, which reads the table attached to the registered version for the device it serves on."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .errors import AdaskipError


class ProfileError(AdaskipError, ValueError):
    """The profile cannot run as asked: a bad batch size or thread count, no CUDA device."""


@dataclass(frozen=True)
class Profile:
    table: pd.DataFrame  # LONG_COLUMNS
    seconds: float

    @property
    def device(self) -> str:
        return str(self.table["device"].iloc[0])

    def file_name(self) -> str:
        """``latency/cpu-intel-xeon-platinum-8375c-t2.csv``: one file per device and thread counts, so profiling a
        machine again replaces its own table only."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.device.lower()).strip("-")
        return f"{slug}-t{'-'.join(map(str, dict.fromkeys(self.table['threads'])))}.csv"

    def summary(self) -> str:
        """The table with one column per batch size and thread count (p50 / p90 ms), fastest first at the first."""
        wide = self.table.pivot_table(
            index="skip", columns=["threads", "batch_size"], values=["p50_ms", "p90_ms"], sort=False
        )
        keys = [(t, b) for stat, t, b in wide.columns if stat == "p50_ms"]
        rows = [f"{'skip':<10}" + "".join(f"{f'batch {b}, {t} thread(s): p50 / p90 ms':>38}" for t, b in keys)]
        for skip in wide[("p50_ms", *keys[0])].sort_values().index:
            rows.append(
                f"{skip:<10}"
                + "".join(
                    f"{wide.loc[skip, ('p50_ms', t, b)]:>27.3f} / {wide.loc[skip, ('p90_ms', t, b)]:<8.3f}"
                    for t, b in keys
                )
            )
        return "\n".join(rows)


def profile(
    model_file: str | Path,
    batch_sizes: Sequence[int] = (1,),
    threads: Sequence[Optional[int]] = (None,),
    device: str = "cpu",
    warmup: int = 2,
    reps: int = 10,
    image_size: Optional[int] = None,
    progress: bool = True,
) -> Profile:
    """p50/p90 milliseconds per forward of one batch of every sub-network of the model file, on ``device``, at
    ``image_size`` (default: the one the model file records)."""
    if not batch_sizes or min(batch_sizes) < 1 or any(t is not None and t < 1 for t in threads):
        raise ProfileError(
            f"batch sizes and thread counts must be >= 1, got --batch {list(batch_sizes)} --threads {list(threads)}"
        )
    if warmup < 0 or reps < 1:
        raise ProfileError(f"--warmup must be >= 0 and --reps >= 1, got {warmup} and {reps}")
    if device not in ("cpu", "cuda"):
        raise ProfileError(f"--device {device!r}: use cpu or cuda")
    import torch
    from tqdm.auto import tqdm

    from .evaluation.complexity import latency_long_table, resolve_threads
    from .models.file import load_model

    if device == "cuda" and not torch.cuda.is_available():
        raise ProfileError("--device cuda: no CUDA device is visible here (torch.cuda.is_available() is False)")
    net, obj = load_model(model_file)
    size = image_size or obj.get("image_size")
    if not size or size < 1:
        raise ProfileError(
            f"{model_file} records no image size: pass --image-size N (the data.image_size it was trained on)"
        )
    net = net.to(device).eval()
    total = len(batch_sizes) * len(resolve_threads(threads)) * 2**net.num_stages
    start = time.perf_counter()
    with tqdm(total=total, desc="profile", unit="sub-network", disable=not progress) as bar:
        table = latency_long_table(net, None, (3, size, size), batch_sizes, threads, warmup, reps, bar.update)
    return Profile(table, time.perf_counter() - start)
