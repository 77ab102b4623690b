"""Client updates, one small file per algorithm, registered by name in :data:`ALGORITHMS`."""
from core.algorithms.base import ALGORITHMS, Algorithm, InnerConfig, get_algorithm, split_meta
from core.algorithms import (  # noqa: F401  (registration)
    cavia, fedavg, lpft, maml, metasgd, metasgd_group, metasgd_layer, perfedavg, r2d2, reptile,
)

__all__ = ["ALGORITHMS", "Algorithm", "InnerConfig", "get_algorithm", "split_meta"]
