"""MAML (Finn et al. 2017, "Model-Agnostic Meta-Learning") and its first-order variant as one flag.

The direction is the meta-gradient of the query loss after adapting on the support set:
second order differentiates through the inner loop; first order (FO-MAML) takes the query gradient
at the adapted weights.
"""
from __future__ import annotations

from functools import partial

from core.adapt import adapt
from core.algorithms.base import ALGORITHMS, Algorithm, ClientResult, InnerConfig
from core.autodiff import grad, grad_and_value
from core.types import Episode, LossFn, Params


def maml_update(
    loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig, *, first_order: bool
) -> ClientResult:
    """One client's MAML direction.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        meta: the meta-parameters, ``{name: tensor shaped like the model's parameter}``.
        episode: ``support`` and ``query`` batches, e.g. ``(x [n, ...], y [n])`` each.
        cfg: the inner loop (``steps`` at ``lr``; ``trainable`` restricts it to a parameter group).
        first_order: FO-MAML (the query gradient at the adapted weights) instead of differentiating
            through the inner loop.

    Returns:
        ``(direction, metrics)`` with ``direction`` keyed and shaped like ``meta`` (a gradient for the server
        optimizer) and ``metrics`` the scalar losses ``train/support_loss_before`` and ``train/query_loss``.
    """
    if first_order:
        adapted = adapt(loss_fn, meta, episode.support, cfg.steps, cfg.lr, first_order=True, **cfg.inner_kwargs())
        query = episode.query_for(adapted)
        direction, query_loss = grad_and_value(loss_fn)(adapted, query)  # one forward for both
    else:
        def meta_loss(p: Params):
            adapted = adapt(loss_fn, p, episode.support, cfg.steps, cfg.lr, **cfg.inner_kwargs())
            loss = loss_fn(adapted, episode.query)
            return loss, loss

        direction, query_loss = grad(meta_loss, has_aux=True)(meta)
    return direction, {"train/support_loss_before": loss_fn(meta, episode.support), "train/query_loss": query_loss}


ALGORITHMS.register(
    "maml",
    Algorithm("maml", partial(maml_update, first_order=False), "MAML, second-order meta-gradient",
              supports_rollouts=False),
)
ALGORITHMS.register(
    "fomaml", Algorithm("fomaml", partial(maml_update, first_order=True), "First-order MAML")
)
