"""CAVIA (Zintgraf et al. ICML 2019, "Fast Context Adaptation via Meta-Learning").

The inner loop adapts only the model's context vector (:mod:`core.context`), always from zero; the
direction is the meta-gradient of the query loss THROUGH that inner loop (second order: the weights learn to
make the context's few gradient steps informative; a first-order version leaves the weights that read the
context almost untrained), for every parameter but the context, whose start is not meta-learned (zero).
A rollout task's query is collected by the adapted policy and then held fixed, as MAML for RL does.
"""
from __future__ import annotations

import torch

from core.adapt import adapt
from core.algorithms.base import ALGORITHMS, Algorithm, ClientResult, InnerConfig
from core.autodiff import grad
from core.context import HOW_TO_ADD
from core.types import Episode, LossFn, Params


def cavia_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig) -> ClientResult:
    """One client's CAVIA direction.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        meta: the meta-parameters, ``{name: tensor shaped like the model's parameter}``.
        episode: ``support`` and ``query`` batches (or a ``query_fn`` that collects the query with the
            adapted parameters).
        cfg: the inner loop; ``cfg.trainable`` names the context parameters (set by the learner from
            ``Algorithm.inner_group``).

    Returns:
        ``(direction, metrics)``: ``direction`` keyed and shaped like ``meta``, zero on the context;
        ``train/support_loss_before`` and ``train/query_loss``.
    """
    if not cfg.trainable:
        raise ValueError(f"cavia adapts the model's context vector: the model has none ({HOW_TO_ADD})")
    kwargs = cfg.inner_kwargs()
    query = episode.query
    if episode.query_fn is not None:  # rollouts of the adapted policy, then a fixed batch
        query = episode.query_for(adapt(loss_fn, meta, episode.support, cfg.steps, cfg.lr, first_order=True, **kwargs))

    def meta_loss(p: Params):
        loss = loss_fn(adapt(loss_fn, p, episode.support, cfg.steps, cfg.lr, **kwargs), query)
        return loss, loss

    direction, query_loss = grad(meta_loss, has_aux=True)(meta)
    context = set(cfg.trainable)
    direction = {k: torch.zeros_like(v) if k in context else v for k, v in direction.items()}
    return direction, {"train/support_loss_before": loss_fn(meta, episode.support), "train/query_loss": query_loss}


ALGORITHMS.register(
    "cavia", Algorithm("cavia", cavia_update, "CAVIA: inner loop on a context vector only, second-order meta-gradient",
                       inner_group="context")
)
