"""Adaptation recipes: WHICH parameters a new site adapts, and how (a recipe is data: its name, recorded
with the registered model and chosen on validation sites like the step size).

Plain fine-tuning of every weight is hard to beat (Chen et al. ICLR 2019; Tian et al. ECCV 2020), but
WHAT is adapted matters once sites shift: the head alone (ANIL, Raghu et al. ICLR 2020), the head first and
then everything (LP-FT, Kumar et al. ICLR 2022: +10% out of distribution over full fine-tuning), or the head
fitted in closed form on the body's features (R2-D2 / MetaOptNet: no step-size or step-count noise), or
only a context vector the network reads (CAVIA, :mod:`core.context`).

Every recipe is built from the ONE :func:`core.adapt.adapt` (parameter groups through its ``trainable``
argument), so evaluation and onboarding run the same math. A recipe's ``rate`` is the searched step size,
except for ``newton-head`` where it is the L2 penalty pulling the head toward the meta-learned one.
Parameter groups come from :meth:`core.problem.Problem.param_groups` (default: ``head`` = the parameters of
the last module that has any, ``body`` = the rest).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from core.adapt import adapt, adapt_trajectory
from core.context import HOW_TO_ADD, context_names
from core.registry import Registry
from core.types import Batch, LossFn, Params

#: ``run(loss_fn, params, support, steps_grid, rate, head, lrs, weight_decay, proximal) -> {steps: params}``
RecipeFn = Callable[..., dict[int, Params]]


def applies_everywhere(loss_fn: LossFn, params: Params) -> None:
    """The check of a recipe that adapts any model and loss."""


@dataclass(frozen=True)
class Recipe:
    """A registered adaptation recipe.

    Args:
        name: the registry name (``all``, ``head``, ``lp-ft``, ``newton-head``).
        description: one line for ``fml verticals`` and the model card.
        run: the trajectory function (detached parameters after each steps count).
        check: raises :class:`RecipeNotApplicable` when the recipe cannot adapt this loss and these parameters;
            a run calls it before any training, so a wrong ``--eval.recipes`` fails in seconds, not after it.
    """

    name: str
    description: str
    run: RecipeFn
    check: Callable[[LossFn, Params], None] = applies_everywhere


RECIPES: Registry[Recipe] = Registry("adaptation recipe")
DEFAULT_RECIPE = "all"


class RecipeNotApplicable(ValueError):
    """A recipe cannot adapt this model or loss (e.g. ``context`` on a model without a context vector); the
    message says what would make it apply."""


def register_recipe(name: str, description: str,
                    check: Optional[Callable[[LossFn, Params], None]] = None) -> Callable[[RecipeFn], RecipeFn]:
    def wrap(fn: RecipeFn) -> RecipeFn:
        RECIPES.register(name, Recipe(name, description, fn, check or applies_everywhere))
        return fn

    return wrap


def _module_of(names: Sequence[str], name: str) -> tuple[str, ...]:
    """The parameters among ``names`` owned by the same module as ``name``."""
    owner = name.rpartition(".")[0]
    return tuple(n for n in names if n.rpartition(".")[0] == owner)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The parameters of the last module (in registration order) that owns parameters: a linear head."""
    names = [n for n, _ in model.named_parameters()]
    return _module_of(names, names[-1]) if names else ()


def _continued(params: Params, steps_grid: Sequence[int], step: Callable[[Params, int], Params]) -> dict[int, Params]:
    """One trajectory for every steps count: ``step(current, more)`` continues from the previous count."""
    out: dict[int, Params] = {}
    current, done = params, 0
    for s in sorted(set(steps_grid)):
        current = step(current, s - done)
        out[s], done = current, s
    return out


def _detached(p: Params) -> Params:
    return {k: v.detach() for k, v in p.items()}


@register_recipe("all", "fine-tune every parameter (the inner loop of meta-training)")
def _all(loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int], rate: float, *,
         head: Sequence[str], lrs: Optional[Params] = None, weight_decay: float = 0.0,
         proximal: float = 0.0) -> dict[int, Params]:
    return adapt_trajectory(loss_fn, params, support, steps_grid, rate, lrs=lrs, weight_decay=weight_decay,
                            proximal=proximal)


@register_recipe("head", "adapt the head only; the body stays the meta-learned one (ANIL)")
def _head(loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int], rate: float, *,
          head: Sequence[str], lrs: Optional[Params] = None, weight_decay: float = 0.0,
          proximal: float = 0.0) -> dict[int, Params]:
    return _continued(params, steps_grid, lambda p, more: _detached(
        adapt(loss_fn, p, support, more, rate, lrs=lrs, weight_decay=weight_decay, proximal=proximal,
              anchor=params, trainable=head)))


@register_recipe("body", "adapt everything but the head (BOIL); the head stays the meta-learned one")
def _body(loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int], rate: float, *,
          head: Sequence[str], lrs: Optional[Params] = None, weight_decay: float = 0.0,
          proximal: float = 0.0) -> dict[int, Params]:
    return _head(loss_fn, params, support, steps_grid, rate, head=[k for k in params if k not in head], lrs=lrs,
                 weight_decay=weight_decay, proximal=proximal)


def has_context(loss_fn: LossFn, params: Params) -> None:
    """The ``context`` recipe's check: the model has a context vector."""
    if not context_names(params):
        raise RecipeNotApplicable(f"recipe 'context' adapts a context vector and this model has none ({HOW_TO_ADD})")


@register_recipe("context", "adapt the context vector only; every weight stays the meta-learned one (CAVIA)",
                 check=has_context)
def _context(loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int], rate: float, *,
             head: Sequence[str], lrs: Optional[Params] = None, weight_decay: float = 0.0,
             proximal: float = 0.0) -> dict[int, Params]:
    has_context(loss_fn, params)
    return _head(loss_fn, params, support, steps_grid, rate, head=context_names(params), lrs=lrs,
                 weight_decay=weight_decay, proximal=proximal)


def input_names(names: Sequence[str]) -> tuple[str, ...]:
    """The parameters of the first module (in registration order) that owns parameters, context vectors
    aside: the layer that reads the input."""
    context = set(context_names(list(names)))
    weights = [n for n in names if n not in context]
    return _module_of(weights, weights[0]) if weights else ()


@register_recipe("input", "adapt the first layer only (surgical fine-tuning, for shifts of the input such as a "
                          "scanner's intensities); every other weight stays the meta-learned one")
def _input(loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int], rate: float, *,
           head: Sequence[str], lrs: Optional[Params] = None, weight_decay: float = 0.0,
           proximal: float = 0.0) -> dict[int, Params]:
    # Lee et al. ICLR 2023: for input-level shifts, tuning the first block beats tuning all or the last
    return _head(loss_fn, params, support, steps_grid, rate, head=input_names(list(params)), lrs=lrs,
                 weight_decay=weight_decay, proximal=proximal)


@register_recipe("lp-ft", "the head for the first half of the steps, then every parameter (LP-FT)")
def _lp_ft(loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int], rate: float, *,
           head: Sequence[str], lrs: Optional[Params] = None, weight_decay: float = 0.0,
           proximal: float = 0.0) -> dict[int, Params]:
    return {s: _detached(lp_ft(loss_fn, params, support, s, rate, head, lrs=lrs, weight_decay=weight_decay,
                               proximal=proximal)) for s in sorted(set(steps_grid))}


def lp_ft(loss_fn: LossFn, params: Params, support: Batch, steps: int, rate: float, head: Sequence[str], *,
          first_order: bool = False, lrs: Optional[Params] = None, weight_decay: float = 0.0,
          proximal: float = 0.0) -> Params:
    """LP-FT (Kumar et al. ICLR 2022) in ``steps`` gradient steps: the ``head`` alone for ``ceil(steps / 2)``,
    then every parameter, the proximal term pulling toward ``params`` throughout. Differentiable (first order
    when asked): ``fomaml-lpft`` meta-trains the initialization through this schedule, the recipe detaches."""
    kw = dict(first_order=first_order, lrs=lrs, weight_decay=weight_decay, proximal=proximal, anchor=params)
    probe = math.ceil(steps / 2)
    probed = adapt(loss_fn, params, support, probe, rate, trainable=head, **kw)
    return adapt(loss_fn, probed, support, steps - probe, rate, **kw)


@register_recipe("newton-head", "the head fitted by Newton steps on the support with an L2 pull toward the "
                                "meta-learned head (ridge for squared loss, L2-logistic for log loss)")
def _newton_head(loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int], rate: float, *,
                 head: Sequence[str], lrs: Optional[Params] = None, weight_decay: float = 0.0,
                 proximal: float = 0.0) -> dict[int, Params]:
    return _continued(params, steps_grid,
                      lambda p, more: _detached(newton_head(loss_fn, p, support, head, rate, more, anchor=params)))


def newton_head(loss_fn: LossFn, params: Params, support: Batch, head: Sequence[str], penalty: float,
                iterations: int, anchor: Optional[Params] = None) -> Params:
    """``iterations`` Newton steps on ``loss_fn(params, support) + penalty / 2 * ||head - anchor_head||^2`` over
    the ``head`` parameters only (the body's features are fixed). For a squared loss one step is the exact
    ridge solution, for a log loss a few steps converge to the L2-regularized logistic regression.
    Differentiable in ``params`` (the body's features, the anchor): an outer ``torch.func.grad`` meta-trains
    the body THROUGH the solve (``r2d2``, :mod:`core.algorithms.r2d2`); the recipe detaches its result."""
    if iterations <= 0 or not head:
        return params
    anchor = params if anchor is None else anchor
    names = list(head)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    centre = torch.cat([anchor[n].reshape(-1) for n in names])
    frozen = {k: v for k, v in params.items() if k not in head}

    def objective(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        p = {**frozen, **{n: t.reshape(sh) for n, t, sh in zip(names, parts, shapes)}}
        return loss_fn(p, support) + 0.5 * penalty * ((flat - centre) ** 2).sum()

    w = torch.cat([params[n].reshape(-1) for n in names])
    with torch.enable_grad():
        for _ in range(iterations):
            g = torch.func.grad(objective)(w)
            h = torch.func.hessian(objective)(w)
            w = w - torch.linalg.solve(h, g)
    parts = torch.split(w, sizes)
    return {**params, **{n: t.reshape(sh) for n, t, sh in zip(names, parts, shapes)}}


def by_setting(steps_grid: Sequence[int], lr_for: Callable[[int], float],
               recipe_for: Callable[[int], str]) -> dict[tuple[float, str], list[int]]:
    """The steps counts that share an adaptation setting (step size, recipe): one trajectory serves them."""
    out: dict[tuple[float, str], list[int]] = {}
    for s in steps_grid:
        out.setdefault((lr_for(s), recipe_for(s)), []).append(s)
    return out


def recipe_trajectory(recipe: str, loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int],
                      rate: float, *, head: Sequence[str] = (), lrs: Optional[Params] = None,
                      weight_decay: float = 0.0, proximal: float = 0.0) -> dict[int, Params]:
    """Detached parameters after each steps count of ``steps_grid`` under the registered ``recipe``."""
    return RECIPES.get(recipe).run(loss_fn, params, support, steps_grid, rate, head=tuple(head), lrs=lrs,
                                   weight_decay=weight_decay, proximal=proximal)


def adapt_with_recipe(recipe: str, loss_fn: LossFn, params: Params, support: Batch, steps: int, rate: float,
                      **kwargs) -> Params:
    """``steps`` of ``recipe`` (onboarding): the last point of :func:`recipe_trajectory`."""
    return recipe_trajectory(recipe, loss_fn, params, support, [steps], rate, **kwargs)[steps]
