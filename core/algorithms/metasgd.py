"""Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning").

Per-parameter inner step sizes are extra meta-parameters (keys ``inner_lr/<name>``), learned with the
initialization by differentiating the query loss through the inner loop (second order by default).
"""
from __future__ import annotations

import torch

from core.adapt import adapt
from core.algorithms.base import ALGORITHMS, LR_PREFIX, Algorithm, ClientResult, InnerConfig, split_meta
from core.autodiff import grad
from core.types import Episode, LossFn, Params


def init_step_sizes(params: Params, cfg: InnerConfig) -> Params:
    """Meta-SGD's extra meta-parameters: ``inner_lr/<name>`` shaped like parameter ``<name>``, all ``cfg.lr``."""
    return {LR_PREFIX + k: torch.full_like(v, cfg.lr) for k, v in params.items()}


def metasgd_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig, *,
                   first_order: bool = False) -> ClientResult:
    """One client's Meta-SGD direction: the meta-gradient of the query loss after ``cfg.steps`` inner steps
    whose step size is learned per parameter entry, with respect to the initialization AND the step sizes.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        meta: the model's parameters ``{name: tensor}`` plus their step sizes ``{"inner_lr/" + name: tensor
            shaped like that parameter}`` (see ``init_step_sizes``).
        episode: ``support`` and ``query`` batches, e.g. ``(x [n, ...], y [n])`` each.
        cfg: the inner loop (``steps``; ``weight_decay`` and ``proximal`` regularize it; ``trainable`` restricts it
            to a parameter group, whose step sizes alone are then learned).
        first_order: hold the inner gradients fixed (d adapted / d init = I, d adapted / d rates = minus the
            inner gradients) instead of differentiating through them; a rollout task's query is then collected
            by the adapted policy and held fixed.

    Returns:
        ``(direction, metrics)`` with ``direction`` keyed and shaped like ``meta`` (step sizes included) and
        ``metrics`` the scalar losses ``train/support_loss_before`` and ``train/query_loss``.
    """
    kwargs = cfg.inner_kwargs()
    query = episode.query
    if episode.query_fn is not None:  # rollouts of the adapted policy, then a fixed batch
        params, lrs = split_meta(meta)
        query = episode.query_for(adapt(loss_fn, params, episode.support, cfg.steps, cfg.lr, first_order=True,
                                        lrs=lrs, **kwargs))

    def meta_loss(m: Params):
        params, lrs = split_meta(m)
        adapted = adapt(loss_fn, params, episode.support, cfg.steps, cfg.lr, first_order=first_order, lrs=lrs,
                        **kwargs)
        loss = loss_fn(adapted, query)
        return loss, loss

    direction, query_loss = grad(meta_loss, has_aux=True)(meta)
    params, _ = split_meta(meta)
    return direction, {"train/support_loss_before": loss_fn(params, episode.support), "train/query_loss": query_loss}


ALGORITHMS.register(
    "metasgd",
    Algorithm("metasgd", metasgd_update, "Meta-SGD: learned per-parameter inner step sizes",
              init_extra=init_step_sizes, supports_rollouts=False),
)
