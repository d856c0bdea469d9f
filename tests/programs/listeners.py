"""Every listening socket of a local Ray and of a 2-worker Ray Train run with adaskip's torch config: rank 0's
process (with the torch.distributed rendezvous store) into argv[1], this process and its children on stdout; Ray's
storage in argv[2]. Run by tests/test_reliability.py."""

import psutil
import sys
from adaskip.orchestration import configure_ray_env, init_ray

configure_ray_env()  # before ray: Ray reads its environment once
import ray  # noqa: E402  (after configure_ray_env: Ray reads its environment once)
import ray.train  # noqa: E402
from adaskip.orchestration.raytrain import LoopbackTorchConfig, TorchTrainer  # noqa: E402


def listening(proc):
    try:
        return [
            f"{proc.name()} {c.laddr.ip} {c.laddr.port}"
            for c in proc.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    except psutil.NoSuchProcess:  # a worker that ended meanwhile
        return []


def train(config):  # 2 DDP workers: rank 0 hosts torch.distributed's rendezvous store
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)
    if ray.train.get_context().get_world_rank() == 0:
        open(config["out"], "w").write("\n".join(listening(psutil.Process())) + f"\nsum {t.item()} 0\n")


init_ray(2)
TorchTrainer(
    train,
    train_loop_config={"out": sys.argv[1]},
    torch_config=LoopbackTorchConfig(backend="gloo"),
    scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.9}),
    run_config=ray.train.RunConfig(storage_path=sys.argv[2], name="t"),
).fit()
me = psutil.Process()
for p in [me, *me.children(recursive=True)]:
    print("\n".join(listening(p)))
