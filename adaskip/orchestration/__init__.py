"""The only layer that imports ray.train / ray.tune: distributed training, the sweep, the parallel grid."""
from .cluster import init_ray

__all__ = ["init_ray"]
