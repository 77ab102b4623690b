"""Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning").

Per-parameter inner step sizes are extra meta-parameters (keys ``inner_lr/<name>``), learned with the
initialization by differentiating the query loss through the inner loop (second order by default).
"""
from __future__ import annotations

import torch

from core.adapt import adapt
from core.algorithms.base import ALGORITHMS, LR_PREFIX, Algorithm, InnerConfig, split_meta
from core.autodiff import grad
from core.types import Episode, LossFn, Params


def init_step_sizes(params: Params, cfg: InnerConfig) -> Params:
    return {LR_PREFIX + k: torch.full_like(v, cfg.lr) for k, v in params.items()}


def metasgd_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig):
    def meta_loss(m: Params):
        params, lrs = split_meta(m)
        adapted = adapt(loss_fn, params, episode.support, cfg.steps, cfg.lr, lrs=lrs, **cfg.adapt_kwargs())
        loss = loss_fn(adapted, episode.query)
        return loss, loss

    direction, query_loss = grad(meta_loss, has_aux=True)(meta)
    params, _ = split_meta(meta)
    return direction, {"train/support_loss_before": loss_fn(params, episode.support), "train/query_loss": query_loss}


ALGORITHMS.register(
    "metasgd",
    Algorithm("metasgd", metasgd_update, "Meta-SGD: learned per-parameter inner step sizes",
              init_extra=init_step_sizes, supports_rollouts=False),
)
