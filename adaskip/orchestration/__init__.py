"""The only layer that imports ray.train / ray.tune: distributed training, the sweep, the parallel grid."""

from .cluster import configure_ray_env, init_ray

__all__ = ["configure_ray_env", "init_ray"]
