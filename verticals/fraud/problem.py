"""The fraud :class:`~core.problem.Problem`: balanced few-shot episodes, natural-rate scoring.

Meta-training episode of a site: ``train_shots`` frauds + ``train_shots`` non-frauds as support and
``train_query`` of each as query (fixed shapes, so a round's clients run in one vmap call).
Evaluation draw (:meth:`FraudProblem.few_shot_task`): ``k`` frauds + ``k`` non-frauds as support;
ALL the site's remaining rows, at their natural fraud rate, are scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from core.problem import FewShotTask, SupervisedProblem
from core.site_statistics import SiteStatistics
from core.tasks import EpisodeSpec, Federation, Site, SiteDataError
from data_adapters.tabular_preprocessing import numeric_feature_indices
from verticals.fraud.metrics import fraud_metrics
from verticals.fraud.model import make_criterion, make_mlp

HEADLINE = "average_precision"


@dataclass
class FraudProblem(SupervisedProblem):
    """A :class:`SupervisedProblem` whose few-shot draws check the site has enough labelled frauds.

    Extra attributes:
        excluded_sites: site id -> why it got no role (too few frauds for training episodes ...).
        source: where the data came from (file path or the generated-data label).
    """

    excluded_sites: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def check_shots(self, site: Site, shots: int) -> None:
        """Fail with a clear message when ``site`` cannot give ``shots`` frauds + 1 held out (same for non-frauds)."""
        for cls, name in ((1, "positive (fraud)"), (0, "negative")):
            have = int((site.y == cls).sum())
            if have < shots + 1:
                raise SiteDataError(
                    f"site {site.site_id!r} has {have} labelled {name} row(s); {shots} shots need at least "
                    f"{shots + 1} ({shots} for the support set + 1 to score). Lower the shots or use a site "
                    "with more labelled cases"
                )

    def validate_shots(self, shots_grid: Sequence[int], roles: Sequence[str] = ("validation", "test")) -> None:
        """Check every site of ``roles`` against the largest shots of ``shots_grid`` (call before training)."""
        for role in roles:
            for site in self.federation.role(role):
                self.check_shots(site, max(shots_grid))

    def few_shot_task(self, model: nn.Module, site: Site, shots: int, gen: torch.Generator) -> FewShotTask:
        self.check_shots(site, shots)
        return super().few_shot_task(model, site, shots, gen)


def model_settings(hidden: Sequence[int], loss: str, pos_weight: float, focal_gamma: float,
                   focal_alpha: float) -> dict[str, Any]:
    """The model part of the saved preprocessing (so onboarding rebuilds the same network and loss)."""
    return {"hidden": [int(h) for h in hidden], "loss": loss, "pos_weight": float(pos_weight),
            "focal_gamma": float(focal_gamma), "focal_alpha": float(focal_alpha)}


def fraud_problem(federation: Federation, preprocessing: dict[str, Any], *, train_shots: int, train_query: int,
                  excluded: dict[str, str] | None = None, source: str = "") -> FraudProblem:
    """Build the problem; the network and loss come from ``preprocessing["model"]``."""
    m = preprocessing["model"]
    n_features = int(preprocessing["n_features"])
    make_criterion(m["loss"])  # unknown loss names fail here, listing the choices
    return FraudProblem(
        federation=federation,
        model_factory=lambda: make_mlp(n_features, m["hidden"]),
        criterion=make_criterion(m["loss"], pos_weight=m["pos_weight"], gamma=m["focal_gamma"],
                                 alpha=m["focal_alpha"]),
        metrics=fraud_metrics,
        headline=HEADLINE,
        train_spec=EpisodeSpec(shots=train_shots, query=train_query, by="class", num_classes=2),
        eval_by="class",
        num_classes=2,
        higher_is_better=True,
        preprocessing=preprocessing,
        ranked=True,
        site_statistics=SiteStatistics(feature_axis=1, features=numeric_feature_indices(preprocessing)),
        excluded_sites=dict(excluded or {}),
        source=source,
    )
