"""FedAvg (McMahan et al. 2017): local SGD on all the client's labelled data; the direction is the model delta.

With the server optimizer SGD at lr 1 this is textbook FedAvg: ``w <- w - (w - mean(w_local))``.
"""
from __future__ import annotations

from core.adapt import adapt
from core.algorithms.base import ALGORITHMS, Algorithm, ClientResult, InnerConfig, concat_batches
from core.types import Episode, LossFn, Params


def fedavg_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig) -> ClientResult:
    """One client's FedAvg direction ``meta - locally trained``: ``cfg.steps`` local SGD steps on all its
    labelled rows (support + query batches concatenated along rows, ``[n_s + n_q, ...]``).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        meta: the meta-parameters, ``{name: tensor shaped like the model's parameter}``.
        episode: ``support`` and ``query`` batches, e.g. ``(x [n, ...], y [n])`` each.
        cfg: the inner loop (``steps`` at ``lr``, ``weight_decay``, ``proximal``).

    Returns:
        ``(direction, metrics)`` with ``direction`` keyed and shaped like ``meta`` and ``metrics`` the
        scalar losses ``train/loss_before`` and ``train/loss_after`` on the client's rows.
    """
    data = concat_batches(episode.support, episode.query)
    trained = adapt(loss_fn, meta, data, cfg.steps, cfg.lr, first_order=True, **cfg.adapt_kwargs())
    direction = {k: meta[k] - trained[k] for k in meta}
    return direction, {"train/loss_before": loss_fn(meta, data), "train/loss_after": loss_fn(trained, data)}


ALGORITHMS.register(
    "fedavg",
    # supports_rollouts: it trains on the episode's FIXED support + query and never calls ``query_fn``, so
    # rollout tasks that also supply a fixed query (robotics: current-policy rollouts) serve it as they are.
    Algorithm("fedavg", fedavg_update, "FedAvg baseline: local SGD, returns init - local weights", is_meta=False),
)
