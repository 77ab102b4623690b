"""Reptile (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms").

Adapt on all the task's labelled data (support + query) and return ``init - adapted``; the server
optimizer moves the initialization toward the adapted weights.
"""
from __future__ import annotations

from core.adapt import adapt
from core.algorithms.base import ALGORITHMS, Algorithm, ClientResult, InnerConfig, concat_batches
from core.types import Episode, LossFn, Params


def reptile_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig) -> ClientResult:
    """One client's Reptile direction ``meta - adapted``, adapting ``cfg.steps`` steps on support + query
    (batches concatenated along rows, ``[n_s + n_q, ...]``; the support alone when there is no query).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        meta: the meta-parameters, ``{name: tensor shaped like the model's parameter}``.
        episode: ``support`` and ``query`` batches, e.g. ``(x [n, ...], y [n])`` each.
        cfg: the inner loop (``steps`` at ``lr``, ``weight_decay``, ``proximal``; ``trainable`` restricts it
            to a parameter group).

    Returns:
        ``(direction, metrics)`` with ``direction`` keyed and shaped like ``meta`` and ``metrics`` the
        scalar losses ``train/loss_before`` and ``train/loss_after`` adaptation.
    """
    data = concat_batches(episode.support, episode.query) if episode.query else episode.support
    adapted = adapt(loss_fn, meta, data, cfg.steps, cfg.lr, first_order=True, **cfg.inner_kwargs())
    direction = {k: meta[k] - adapted[k] for k in meta}
    return direction, {"train/loss_before": loss_fn(meta, data), "train/loss_after": loss_fn(adapted, data)}


ALGORITHMS.register("reptile", Algorithm("reptile", reptile_update, "Reptile: init - adapted weights",
                                         trains_outside_group=False))
