"""The divergence guard: a site keeps its start, unadapted, when adapting it diverged.

A step size chosen on validation sites can be too large for a new one (Reptile's 0.1 on a strong-simulation
operator reached 8e7 RMSE). Adapting is meant to LOWER the support loss it minimizes, so an adaptation that raised
it, or left non-finite weights, is worse than no adaptation on the only data the site has. One exception: a
classifier of several classes whose adapted support has FEWER wrong rows (``support_errors``). Its cross-entropy is
dominated by confidently wrong rows, so a step that fixes many of them can raise the loss while the accuracy rises
(digits: the loss rose in 278 of 360 one-step cells of MAML and FO-MAML, and all 278 helped, +0.41 accuracy;
``benchmarks/results/experiments/guard_signals_digits_quick.json``). Binary tasks ranked by AUROC / PR-AUC get no
exception: on fraud the raised-loss cells hurt whether or not the support's misordered pairs fell. ``fml onboard`` and
the held-out protocol (``eval.guard``) apply the same rule, so the table scores what a new site gets.
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
    support_errors: Optional[Callable[[Params], Optional[int]]] = None,
) -> Optional[str]:
    """Why ``adapted`` diverged from ``start`` on ``support`` (None when it did not): non-finite weights, or, where
    adapting is meant to lower it (``loss_should_fall``: not a policy-gradient surrogate), a support loss that
    adapting RAISED to a finite value without ``support_errors`` (the task's count of wrong support rows; None: not
    counted) falling. The loss compared is the one adapting minimizes, ``adapt_kwargs``' weight decay or proximal
    pull towards ``start`` included."""
    if not all(bool(torch.isfinite(v).all()) for v in adapted.values()):
        return "diverged (non-finite weights)"
    if not loss_should_fall:
        return None
    with torch.no_grad():
        before, after = (float(regularized_loss(loss_fn, p, support, anchor=start, **dict(adapt_kwargs or {})))
                         for p in (start, adapted))
    if math.isfinite(after) and not after > before:
        return None
    wrong = (support_errors(start), support_errors(adapted)) if support_errors is not None else (None, None)
    if math.isfinite(after) and None not in wrong:
        if wrong[1] < wrong[0]:
            return None
        return (f"raised its support loss ({before:.4g} -> {after:.4g}) and got no fewer support rows right "
                f"({wrong[0]} -> {wrong[1]} wrong), so it diverged")
    return f"raised its support loss ({before:.4g} -> {after:.4g}), so it diverged"
