"""The robotics vertical's adaptation recipes: ``reinforce`` and ``context-reinforce``, the core's ``all`` and
``context`` on REINFORCE's unclipped surrogate.

The run's surrogate (PPO by default) is also the inner loop of meta-training; at adaptation its clip stops
later steps on the SAME rollouts once the policy has moved 20% from the one that collected them, which
measured helps some starts (FO-MAML) and costs others (`fedavg+ft`, CAVIA) 2.5 to 10 return after 5 steps
(verticals/robotics/README.md). As recipes, the surrogate is chosen per method on the validation robots like
the step size (``--set 'eval.recipes=[reinforce]'``): one step is identical under both (the ratio is 1).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from core.recipes import RECIPES, RecipeFn, RecipeNotApplicable, register_recipe
from core.types import Batch, LossFn, Params
from verticals.robotics.problem import PolicyLoss


def on_reinforce(name: str, base: str) -> tuple[RecipeFn, Callable[[LossFn, Params], None]]:
    """Recipe ``name``: the registered recipe ``base`` with the policy loss's surrogate switched to REINFORCE's,
    and its check."""

    def check(loss_fn: LossFn, params: Params) -> None:
        if not isinstance(loss_fn, PolicyLoss):
            raise RecipeNotApplicable(f"recipe '{name}' switches a policy-gradient loss to REINFORCE's surrogate and "
                                      "this problem's loss is not one (the robotics vertical's is)")
        RECIPES.get(base).check(loss_fn, params)

    def run(loss_fn: LossFn, params: Params, support: Batch, steps_grid: Sequence[int], rate: float, *,
            head: Sequence[str], lrs: Optional[Params] = None, weight_decay: float = 0.0,
            proximal: float = 0.0) -> dict[int, Params]:
        check(loss_fn, params)
        return RECIPES.get(base).run(loss_fn.with_surrogate("reinforce"), params, support, steps_grid, rate,
                                     head=head, lrs=lrs, weight_decay=weight_decay, proximal=proximal)

    return run, check


for _name, _base, _description in (
        ("reinforce", "all", "every parameter on REINFORCE's unclipped policy-gradient surrogate (robotics): later "
                             "steps on the same rollouts keep moving where PPO's clip stops them"),
        ("context-reinforce", "context", "the context vector only (CAVIA), on REINFORCE's unclipped surrogate "
                                         "(robotics)")):
    _run, _check = on_reinforce(_name, _base)
    register_recipe(_name, _description, check=_check)(_run)
