"""Starting or joining a Ray cluster."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Offline machines: no usage stats, no auth prompt. Ray Train's 60 s worker-group start timeout is too short
# when a few workers import torch at once on 2 cores (then it retries forever): allow 10 minutes.
# setdefault keeps what the user set; Ray Train propagates these to its controller.
for _k, _v in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"), ("RAY_DEDUP_LOGS", "1"),
               ("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")):
    os.environ.setdefault(_k, _v)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` if set, else start a local one sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        log.info("joining the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        ray.init(log_to_driver=True)
        return
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, object_store_memory=300 * 2**20,
             log_to_driver=True, configure_logging=False)


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))
