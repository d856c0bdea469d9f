"""One rank of a two-process Gloo all-reduce across the two hosts: run by tests/test_cluster.py."""

import datetime
import os
import sys
import torch
import torch.distributed as dist

rank, master, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group(
    "gloo", init_method=f"tcp://{master}:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20)
)
t = torch.ones(1) * (rank + 1)
dist.all_reduce(t)
print("SUM", t.item(), flush=True)
os._exit(0)
