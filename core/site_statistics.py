"""Site statistics from unlabeled inputs: standardize each site's features by the site's OWN moments.

A new clinic, plant or bank has far more unlabeled inputs than labels. Re-estimating input or
normalization statistics on the target removes much of a covariate shift before any gradient step
(Schneider et al. NeurIPS 2020; FedBN, Li et al. ICLR 2021 keeps normalization local for scanner
shift): a per-site calibration offset or gain on a sensor, a clinic's intensity scale, a bank's
amount scale. The recipe is applied to EVERY site of a run (training sites' episodes included, so the
initialization expects standardized inputs) and again at onboarding, from the site's inputs
(labelled and unlabeled rows alike); labels are never read. A vertical's layout may only centre (keep the
spread) and estimate from each unit's first rows (a fleet's healthy start): :class:`SiteStatistics`.

Pure functions over tensors; a :class:`Problem` declares where its features are
(:attr:`core.problem.Problem.site_statistics`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    from core.problem import Problem
    from core.tasks import Site

#: The preprocessing key that records that a model expects site-standardized inputs.
PREPROCESSING_KEY = "site_statistics"


@dataclass
class SiteStatisticsOption:
    """The data option of the verticals that support the recipe (mixed into their data config)."""

    site_statistics: bool = False
    """Standardize every site's input features by the site's OWN statistics, computed from its inputs
    (unlabeled rows included, labels never read), in training, evaluation and onboarding alike (maintenance:
    centred on each engine's first 20 windows, the spread kept)."""


@dataclass(frozen=True)
class SiteStatistics:
    """Where the features of a model input are, for per-site standardization.

    Args:
        feature_axis: the axis of ``x`` whose entries are features (``1`` for rows ``[n, F]`` and images
            ``[n, C, H, W]``, ``-1`` for windows ``[n, T, F]``); moments pool every other axis.
        features: which features to standardize (e.g. numeric columns, not one-hot ones); None = all.
        min_std: a feature whose site standard deviation is below this keeps its scale (only its mean is
            removed): a feature constant on one site must not be blown up into noise.
        scale: also divide by the site's standard deviation; False only removes the site's mean (a
            calibration offset) and keeps each feature's spread, for inputs whose spread carries the label
            (a fleet's degradation: a site's sensor spread grows with how worn its units are).
        first_rows: estimate the moments from only the first ``first_rows`` rows of each group
            (``site.groups``, in row order), e.g. each engine's first windows: a fleet's units share a healthy
            start, so the statistics do not move with how far into their lives the units are (an in-service
            fleet is younger than a run-to-failure one). Inputs without a group (``site.unlabeled``) then add
            nothing. 0: every input.
    """

    feature_axis: int
    features: Optional[tuple[int, ...]] = None
    min_std: float = 1e-3
    scale: bool = True
    first_rows: int = 0

    @property
    def record(self) -> dict[str, Any]:
        """What a trained model records it expects (:func:`layout_of` reads it back)."""
        return {"scale": self.scale, "first_rows": self.first_rows}

    def basis(self, site: "Site") -> list[Tensor]:
        """The inputs of ``site`` its moments are estimated from (labels never read)."""
        if self.first_rows and site.groups is not None:
            rows = [torch.nonzero(site.groups == g).flatten()[: self.first_rows] for g in torch.unique(site.groups)]
            return [site.x[torch.cat(rows)]]
        return [t for t in (site.x, site.unlabeled) if t is not None and len(t)]

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean [F], std [F])`` of every feature of ``x`` over all its other axes (float64 accumulation)."""
        axis = self.feature_axis % x.dim()
        flat = x.detach().movedim(axis, -1).reshape(-1, x.shape[axis]).double()
        mean = flat.mean(0)
        std = flat.var(0, unbiased=False).sqrt()
        return mean.float(), std.float()

    def apply(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """``x`` with the selected features standardized by ``(mean, std)`` (the others unchanged)."""
        axis = self.feature_axis % x.dim()
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        centre = torch.zeros_like(mean)
        scale = torch.ones_like(std)
        picked = torch.arange(x.shape[axis]) if self.features is None else torch.as_tensor(self.features, dtype=torch.long)
        centre[picked] = mean[picked]
        if self.scale:
            scale[picked] = torch.where(std[picked] >= self.min_std, std[picked], torch.ones_like(std[picked]))
        return (x - centre.view(shape).to(x.dtype)) / scale.view(shape).to(x.dtype)

    def standardize(self, x: Tensor, basis: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Any]]:
        """``x`` standardized by the moments of ``basis`` (default ``x`` itself), and those moments (JSON-able,
        with ``rows``: how many inputs they pooled; a personalized model needs them to score future inputs)."""
        basis = x if basis is None else basis
        mean, std = self.moments(basis)
        return self.apply(x, mean, std), {"mean": mean.tolist(), "std": std.tolist(), "rows": len(basis)}


def layout_of(problem: "Problem", recorded: Any = None) -> SiteStatistics:
    """The problem's feature layout, or a clear error when its vertical has none (e.g. RL: no inputs).
    ``recorded``: what a trained model's preprocessing says it expects (:attr:`SiteStatistics.record`;
    ``True`` in models older than it: standardized by every input) overrides the vertical's current one."""
    layout = getattr(problem, "site_statistics", None)
    if layout is None:
        raise ValueError(f"{type(problem).__name__} declares no input features to standardize per site; "
                         "turn data.site_statistics off for this vertical")
    if recorded is None:
        return layout
    if recorded is True:
        return replace(layout, scale=True, first_rows=0)
    try:
        return replace(layout, scale=bool(recorded["scale"]), first_rows=int(recorded["first_rows"]))
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"the model's preprocessing.site_statistics (in its fml.json) is {recorded!r}: expected "
                         "true or {'scale': bool, 'first_rows': int}, as the run that trained it wrote; "
                         "re-register the model rather than edit that file") from err


def standardize_site(problem: "Problem", site: "Site", unlabeled: Sequence[Tensor] = (),
                     recorded: Any = None) -> dict[str, Any]:
    """Replace ``site.x`` (and ``site.unlabeled``) by their standardization with the moments of the site's
    inputs (:meth:`SiteStatistics.basis`: every labelled and unlabeled row by default) and ``unlabeled`` (more
    of the site's inputs, already selected the same way); ``site.y`` is never read. ``recorded``: what the
    model was trained with (:func:`layout_of`). Returns the moments (stored in
    ``site.metadata['site_statistics']``, with ``rows``: how many inputs they pooled, and ``mode``: the layout's
    :attr:`SiteStatistics.record`)."""
    layout = layout_of(problem, recorded)
    site.x, moments = layout.standardize(site.x, torch.cat([*layout.basis(site), *(t for t in unlabeled if len(t))]))
    if site.unlabeled is not None and len(site.unlabeled):
        site.unlabeled = layout.apply(site.unlabeled, torch.tensor(moments["mean"]), torch.tensor(moments["std"]))
    moments["mode"] = layout.record
    site.metadata[PREPROCESSING_KEY] = moments
    return moments


def standardize_federation(problem: "Problem") -> None:
    """Standardize every site of ``problem``'s federation by its own inputs (training, validation and
    test sites alike) and record in its preprocessing what the model expects (:attr:`SiteStatistics.record`)."""
    for site in problem.federation.sites.values():
        standardize_site(problem, site)
    problem.preprocessing[PREPROCESSING_KEY] = layout_of(problem).record
