"""The divergence guard: a site keeps its start, unadapted, when adapting it diverged.

A step size chosen on validation sites can be too large for a new one (Reptile's 0.1 on a strong-simulation
operator reached 8e7 RMSE). Adapting is meant to LOWER the support loss it minimizes, so an adaptation that raised
it, or left non-finite weights, is worse than no adaptation on the only data the site has -- unless it sorts
that data better: a large step from a confidently wrong start can overshoot the cross-entropy while fixing most
predictions (MAML's digits start, one step: support loss 6.1 -> 6.7, query accuracy 0.20 -> 0.62), so where the
task counts errors (``FewShotTask.support_error``: misclassified rows, misordered pairs) an adaptation that lowered
them is kept. ``fml onboard`` and the held-out protocol (``eval.guard``) apply the same rule, so the table scores
what a new site gets.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import torch

from core.adapt import regularized_loss
from core.types import Batch, LossFn, Params


def divergence(
    loss_fn: LossFn,
    start: Params,
    adapted: Params,
    support: Batch,
    *,
    loss_should_fall: bool = True,
    adapt_kwargs: Optional[Mapping[str, float]] = None,
    support_error: Optional[Callable[[Params], Optional[float]]] = None,
) -> Optional[str]:
    """Why ``adapted`` diverged from ``start`` on ``support`` (None when it did not): non-finite weights, or, where
    adapting is meant to lower it (``loss_should_fall``: not a policy-gradient surrogate), a support loss that
    adapting RAISED without lowering ``support_error`` (the task's count of wrong answers on the same support; None
    or absent: the loss alone decides). The loss compared is the one adapting minimizes, ``adapt_kwargs``' weight
    decay or proximal pull towards ``start`` included."""
    if not all(bool(torch.isfinite(v).all()) for v in adapted.values()):
        return "diverged (non-finite weights)"
    if not loss_should_fall:
        return None
    with torch.no_grad():
        before, after = (float(regularized_loss(loss_fn, p, support, anchor=start, **dict(adapt_kwargs or {})))
                         for p in (start, adapted))
    if math.isfinite(after) and not after > before:
        return None
    errors = (support_error(start), support_error(adapted)) if support_error is not None else (None, None)
    if None not in errors and errors[1] < errors[0]:
        return None
    also = "" if None in errors else f" and did not lower its support error ({errors[0]:.3g} -> {errors[1]:.3g})"
    return f"raised its support loss ({before:.4g} -> {after:.4g}){also}, so it diverged"
