"""Learned inner step sizes per named parameter group -- ``head``, ``body``, ``context`` of
:meth:`core.problem.Problem.param_groups` -- meta-trained second order (``metasgd-group``, as Meta-SGD) or first
order (``fomaml-group``, at FO-MAML's cost).

Between Meta-SGD's step size per weight and MAML's one for everything: two or three meta-parameters that let
the head move fast and the body slowly (or the reverse) as the training sites ask. A group's rate is stored as
one scalar per tensor of the group (Meta-SGD's ``inner_lr/<name>`` keys) and TIED: the members start equal and
each receives the group's summed gradient, so they stay equal through aggregation and the server optimizer
(independent DP noise per entry would untie them: they then act as per-tensor rates), and evaluation, the
per-site choice and onboarding read them like any learned step sizes.

First order holds the inner gradients fixed: d adapted / d init = I (FO-MAML's direction) and
d adapted / d rate = -(the sum of the group's inner gradients), exact for one inner step.
"""
from __future__ import annotations

from functools import partial

import torch

from core.algorithms.base import ALGORITHMS, LR_PREFIX, Algorithm, ClientResult, InnerConfig
from core.algorithms.metasgd import metasgd_update
from core.algorithms.metasgd_layer import init_layer_step_sizes
from core.types import Episode, LossFn, Params


def tie_rates(direction: Params, groups: tuple[tuple[str, ...], ...]) -> Params:
    """``direction`` with each group's step-size entries replaced by their sum: the gradient with respect to ONE
    rate shared by the group's tensors (the other entries unchanged)."""
    out = dict(direction)
    for names in groups:
        keys = [LR_PREFIX + n for n in names if LR_PREFIX + n in direction]
        if keys:
            total = torch.stack([direction[k] for k in keys]).sum(0)
            out.update({k: total for k in keys})
    return out


def group_rate_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig, *,
                      first_order: bool) -> ClientResult:
    """One client's direction for the initialization AND one step size per parameter group.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        meta: the model's parameters plus ``inner_lr/<name>`` scalars (``init_layer_step_sizes``), equal within a
            group.
        episode: ``support`` and ``query`` batches (or a ``query_fn`` the adapted policy collects the query with,
            first order only).
        cfg: ``steps`` inner steps; ``rate_groups`` (set by the learner) names each group's tensors.
        first_order: hold the inner gradients fixed (FO-MAML) instead of differentiating through them.

    Returns:
        ``(direction, metrics)``: ``direction`` keyed like ``meta``, the step sizes' entries tied per group;
        ``train/support_loss_before`` and ``train/query_loss``.
    """
    if not cfg.rate_groups:
        raise ValueError("step sizes per parameter group need the groups' names: the learner sets inner.rate_groups "
                         "from the problem's param_groups (core.learner.with_group)")
    direction, metrics = metasgd_update(loss_fn, meta, episode, cfg, first_order=first_order)
    return tie_rates(direction, cfg.rate_groups), metrics

ALGORITHMS.register(
    "metasgd-group",
    Algorithm("metasgd-group", partial(group_rate_update, first_order=False),
              "Meta-SGD with one learned inner step size per parameter group (head, body, context), second order",
              init_extra=init_layer_step_sizes, supports_rollouts=False),
)
ALGORITHMS.register(
    "fomaml-group",
    Algorithm("fomaml-group", partial(group_rate_update, first_order=True),
              "FO-MAML that also learns one inner step size per parameter group (head, body, context)",
              init_extra=init_layer_step_sizes),
)
