"""The ONE inner loop: used inside meta-training and at onboarding, so what is optimized is what is deployed."""
from __future__ import annotations

from typing import Collection, Optional, Sequence

import torch

from core.autodiff import grad
from core.types import Batch, LossFn, Params


def regularized_loss(
    loss_fn: LossFn,
    params: Params,
    batch: Batch,
    *,
    weight_decay: float = 0.0,
    proximal: float = 0.0,
    anchor: Optional[Params] = None,
) -> torch.Tensor:
    """``loss_fn`` plus optional L2 weight decay and a proximal term ``proximal/2 * ||params - anchor||^2``."""
    loss = loss_fn(params, batch)
    if weight_decay:
        loss = loss + 0.5 * weight_decay * sum((v * v).sum() for v in params.values())
    if proximal and anchor is not None:
        loss = loss + 0.5 * proximal * sum(((params[k] - anchor[k]) ** 2).sum() for k in params)
    return loss


def adapt(
    loss_fn: LossFn,
    params: Params,
    support: Batch,
    steps: int,
    lr: float,
    *,
    first_order: bool = False,
    lrs: Optional[Params] = None,
    weight_decay: float = 0.0,
    proximal: float = 0.0,
    anchor: Optional[Params] = None,
    trainable: Optional[Collection[str]] = None,
) -> Params:
    """Adapt ``params`` with ``steps`` full-batch gradient steps on ``support``.

    Pure and ``vmap``-able: returns new parameters, never mutates its inputs. When called inside an
    outer ``torch.func.grad`` it is differentiable (second order) unless ``first_order`` detaches the
    inner gradients (then ``d adapted / d params = I``, as in FO-MAML).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params: initial parameters (the meta-initialization).
        support: the batch adapted on, e.g. ``(x [n, ...], y [n])``.
        steps: number of gradient steps (0 returns ``params`` unchanged).
        lr: step size, used for every tensor unless ``lrs`` is given.
        first_order: stop gradients through the inner gradients.
        lrs: per-parameter step sizes (Meta-SGD, Li et al. 2017), tensors shaped like ``params``.
        weight_decay: L2 coefficient on the adapted weights.
        proximal: coefficient of the pull toward ``anchor`` (default: the initial ``params``).
        anchor: the parameters the proximal term pulls toward.
        trainable: names of the parameters adapted (a parameter group, e.g. the head); the others are
            returned as the same tensors, untouched. None = all.

    Example:
        >>> adapted = adapt(loss_fn, init, (x_s, y_s), steps=5, lr=0.05)
    """
    anchor = params if anchor is None else anchor
    if trainable is not None:
        frozen = {k: v for k, v in params.items() if k not in trainable}
        moving = {k: v for k, v in params.items() if k in trainable}
        sub_lrs = None if lrs is None else {k: lrs[k] for k in moving}
        sub_anchor = {k: anchor[k] for k in moving}
        adapted = adapt(lambda p, b: loss_fn({**frozen, **p}, b), moving, support, steps, lr,
                        first_order=first_order, lrs=sub_lrs, weight_decay=weight_decay, proximal=proximal,
                        anchor=sub_anchor)
        return {k: adapted.get(k, v) for k, v in params.items()}

    def objective(p: Params) -> torch.Tensor:
        return regularized_loss(loss_fn, p, support, weight_decay=weight_decay, proximal=proximal, anchor=anchor)

    current = params
    for _ in range(steps):
        grads = grad(objective)(current)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        if lrs is None and not isinstance(lr, torch.Tensor):
            # one fused op per tensor: ``p - lr * g`` allocates twice (measured -19% CPU, R1 vmap FO, 50 clients)
            current = {k: torch.sub(current[k], grads[k], alpha=lr) for k in current}
        else:
            current = {k: current[k] - (lrs[k] if lrs is not None else lr) * grads[k] for k in current}
    return current


def adapt_trajectory(
    loss_fn: LossFn,
    params: Params,
    support: Batch,
    steps_grid: Sequence[int],
    lr: float,
    *,
    lrs: Optional[Params] = None,
    weight_decay: float = 0.0,
    proximal: float = 0.0,
) -> dict[int, Params]:
    """Detached parameters after each steps count of ``steps_grid``: one :func:`adapt` trajectory (the
    proximal term always pulls toward ``params``), so scoring 1, 5 and 10 steps costs 10 steps."""
    out: dict[int, Params] = {}
    current, done = params, 0
    for s in sorted(set(steps_grid)):
        current = adapt(loss_fn, current, support, s - done, lr, lrs=lrs, weight_decay=weight_decay,
                        proximal=proximal, anchor=params)
        current = {k: v.detach() for k, v in current.items()}
        out[s], done = current, s
    return out
