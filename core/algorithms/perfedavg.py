"""Per-FedAvg (Fallah, Mokhtari, Ozdaglar 2020, "Personalized Federated Learning with Theoretical
Guarantees: A Model-Agnostic Meta-Learning Approach").

One inner step ``theta' = theta - a * grad L(theta; D_s)``, then the direction

- FO: ``grad L(theta'; D_q)``;
- HF: ``grad L(theta'; D_q) - a * H(theta; D_s) grad L(theta'; D_q)``, the Hessian-vector product computed
  exactly by forward-over-reverse differentiation (the paper's finite-difference estimate converges to it).
The Hessian batch is the support batch (the paper's D'' drawn from the same client data).
"""
from __future__ import annotations

from functools import partial

import torch
from torch.func import jvp

from core.adapt import adapt, regularized_loss
from core.algorithms.base import ALGORITHMS, Algorithm, ClientResult, InnerConfig
from core.autodiff import grad, grad_and_value
from core.types import Episode, LossFn, Params


def perfedavg_update(
    loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig, *, hessian_free: bool
) -> ClientResult:
    """One client's Per-FedAvg direction after ONE inner step ``theta' = theta - lr * grad L(theta; support)``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        meta: the meta-parameters, ``{name: tensor shaped like the model's parameter}``.
        episode: ``support`` and ``query`` batches, e.g. ``(x [n, ...], y [n])`` each; for rollout tasks
            ``query_fn`` produces the query from the adapted weights.
        cfg: the inner step's ``lr`` and regularization (``steps`` is ignored: Per-FedAvg takes one step);
            ``trainable`` restricts the step to a parameter group.
        hessian_free: subtract ``lr * H(theta; support) g`` from the query gradient ``g`` (Per-FedAvg HF,
            an exact Hessian-vector product) instead of returning ``g`` alone (first order).

    Returns:
        ``(direction, metrics)`` with ``direction`` keyed and shaped like ``meta`` and ``metrics`` the
        scalar losses ``train/support_loss_before`` and ``train/query_loss``.
    """
    adapted = adapt(loss_fn, meta, episode.support, 1, cfg.lr, first_order=True, **cfg.inner_kwargs())
    query = episode.query_for(adapted)
    g_query, query_loss = grad_and_value(loss_fn)(adapted, query)  # one forward for both
    direction = g_query
    if hessian_free:
        # Hessian of the inner step's objective: weight decay adds ``wd * I``; the proximal term's
        # curvature cancels (its anchor is the initialization itself), exactly as in one-step MAML.
        support_grad = lambda p: grad(  # noqa: E731
            lambda q: regularized_loss(loss_fn, q, episode.support, weight_decay=cfg.weight_decay))(p)
        # an inner step on a group moves only its entries: d theta' / d theta = I - lr P H, so the tangent is P g
        moved = set(cfg.trainable) if cfg.trainable else set(g_query)
        tangent = {k: g if k in moved else torch.zeros_like(g) for k, g in g_query.items()}
        _, hvp = jvp(support_grad, (meta,), (tangent,))
        direction = {k: g_query[k] - cfg.lr * hvp[k] for k in g_query}
    return direction, {"train/support_loss_before": loss_fn(meta, episode.support),
                       "train/query_loss": query_loss}


ALGORITHMS.register(
    "perfedavg", Algorithm("perfedavg", partial(perfedavg_update, hessian_free=False), "Per-FedAvg, first-order")
)
ALGORITHMS.register(
    "perfedavg-hf",
    Algorithm("perfedavg-hf", partial(perfedavg_update, hessian_free=True),
              "Per-FedAvg, Hessian-free (exact Hessian-vector product)", supports_rollouts=False),
)
