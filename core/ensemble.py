"""An ensemble start: the bundle's candidates each adapted on the site's support, their OUTPUTS averaged.

Why: the FedAvg model and an FML initialization fail on different sites, and the mean of two adapted models'
outputs is better than either on most sites and never worse than their average on a convex loss (an RMSE is
at most the members' mean RMSE): a site hedges instead of betting on one start. Logits are averaged for
classifiers (a normalized geometric mean of the members' probabilities), predictions for regressors; the
personalized model is one :class:`OutputAverage` module, so it loads and serves like any other.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from core.types import Params

#: The method row and the onboarding candidate name of the ensemble of a bundle's candidates.
ENSEMBLE = "ensemble"


class OutputAverage(nn.Module):
    """The mean of ``members``' outputs on the same input (each member a copy of one architecture)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def average_of(model: nn.Module, count: int) -> OutputAverage:
    """``count`` independent copies of ``model`` averaged (copies: ``functional_call`` names each member's own)."""
    return OutputAverage([copy.deepcopy(model) for _ in range(count)])


def ensemble_params(members: Sequence[Params]) -> Params:
    """The parameters of :func:`average_of` carrying each member's ``params``."""
    return {f"members.{i}.{name}": value for i, params in enumerate(members) for name, value in params.items()}


def score_ensemble(task: object, members: Sequence[Params]) -> Optional[dict[str, float]]:
    """``task.score`` of the members' averaged outputs; None when the task scores something other than a
    model's outputs on fixed rows (a policy's rollouts), where averaging outputs is not what would be served."""
    if not averages_outputs(task) or len(members) < 2:
        return None
    return dataclasses.replace(task, model=average_of(task.model, len(members))).score(ensemble_params(members))


def averages_outputs(task: object) -> bool:
    """Whether :func:`score_ensemble` can score ``task`` (it scores a model's outputs on fixed rows)."""
    return isinstance(getattr(task, "model", None), nn.Module) and dataclasses.is_dataclass(task)
