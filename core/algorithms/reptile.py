"""Reptile (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms").

Adapt on all the task's labelled data (support + query) and return ``init - adapted``; the server
optimizer moves the initialization toward the adapted weights.
"""
from __future__ import annotations

from core.adapt import adapt
from core.algorithms.base import ALGORITHMS, Algorithm, InnerConfig, concat_batches
from core.types import Episode, LossFn, Params


def reptile_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig):
    """One client's Reptile direction ``meta - adapted`` (keyed and shaped like ``meta``), adapting ``cfg.steps``
    steps on support + query (``(x [n, ...], y [n])`` batches concatenated along rows); metrics are the
    loss before and after adaptation (scalar tensors)."""
    data = concat_batches(episode.support, episode.query) if episode.query else episode.support
    adapted = adapt(loss_fn, meta, data, cfg.steps, cfg.lr, first_order=True, **cfg.inner_kwargs())
    direction = {k: meta[k] - adapted[k] for k in meta}
    return direction, {"train/loss_before": loss_fn(meta, data), "train/loss_after": loss_fn(adapted, data)}


ALGORITHMS.register("reptile", Algorithm("reptile", reptile_update, "Reptile: init - adapted weights"))
