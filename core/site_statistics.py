"""Site statistics from unlabeled inputs: standardize each site's features by the site's OWN moments.

A new clinic, plant or bank has far more unlabeled inputs than labels. Re-estimating input or
normalization statistics on the target removes much of a covariate shift before any gradient step
(Schneider et al. NeurIPS 2020; FedBN, Li et al. ICLR 2021 keeps normalization local for scanner
shift): a per-site calibration offset or gain on a sensor, a clinic's intensity scale, a bank's
amount scale. The recipe is applied to EVERY site of a run (training sites' episodes included, so the
initialization expects standardized inputs) and again at onboarding, from the site's inputs
(labelled and unlabeled rows alike); labels are never read. A vertical's layout may only centre (keep the
spread), estimate from each unit's first rows (a fleet's healthy start), or also orient each site's images
by the training sites' mean image (an inverted intensity scale): :class:`SiteStatistics`.

Pure functions over tensors; a :class:`Problem` declares where its features are
(:attr:`core.problem.Problem.site_statistics`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from core.problem import Problem
    from core.tasks import Site

#: The preprocessing key that records that a model expects site-standardized inputs.
PREPROCESSING_KEY = "site_statistics"
#: The side of the pooled mean image a site is oriented by (small enough to record in a model's fml.json).
PROFILE_SIDE = 16


@dataclass
class SiteStatisticsOption:
    """The data option of the verticals that support the recipe (mixed into their data config)."""

    site_statistics: bool = False
    """Standardize every site's input features by the site's OWN statistics, computed from its inputs
    (unlabeled rows included, labels never read), in training, evaluation and onboarding alike (maintenance:
    centred on each engine's first 20 windows, the spread kept; imaging: only oriented by the training
    clinics' mean image, an inverted clinic reflected back, on in the presets)."""


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
        centre: remove the site's mean; False (only with ``scale=False`` and ``orient``) keeps the site's
            intensities as they are and only orients them: a negative channel is reflected about its mean.
        orient: also flip the sign of a channel whose standardized mean image (:meth:`profile`) correlates
            negatively with the training sites' (``reference``): standardizing removes a site's gain and offset
            but keeps its sign, so a clinic that exports inverted intensities (DICOM's MONOCHROME1 read as
            MONOCHROME2) would reach the model as a photographic negative. Images ``[n, C, H, W]`` only.
        reference: the training sites' mean profile per channel (:func:`reference_profile`), set by
            :func:`standardize_federation` and recorded with the model; None until then.
    """

    feature_axis: int
    features: Optional[tuple[int, ...]] = None
    min_std: float = 1e-3
    scale: bool = True
    first_rows: int = 0
    centre: bool = True
    orient: bool = False
    reference: Optional[tuple[tuple[float, ...], ...]] = None

    def __post_init__(self) -> None:
        if not self.centre and (self.scale or not self.orient):
            raise ValueError("SiteStatistics(centre=False) only orients: it needs scale=False and orient=True")

    @property
    def record(self) -> dict[str, Any]:
        """What a trained model records it expects (:func:`layout_of` reads it back)."""
        record: dict[str, Any] = {"scale": self.scale, "first_rows": self.first_rows}
        if not self.centre:
            record["centre"] = False
        if self.orient:
            record.update(orient=True, reference=None if self.reference is None else [list(r) for r in self.reference])
        return record

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

    def spread(self, std: Tensor) -> Tensor:
        """``std`` where it is at least :attr:`min_std`, else 1 (such a feature keeps its scale)."""
        return torch.where(std >= self.min_std, std, torch.ones_like(std))

    def apply(self, x: Tensor, mean: Tensor, std: Tensor, sign: Optional[Tensor] = None) -> Tensor:
        """``x`` with the selected features standardized by ``(mean, std)`` and multiplied by ``sign`` (±1 per
        feature, :meth:`signs`; None = all +1), the mean added back when the layout does not centre (a
        reflection about it); the other features unchanged."""
        axis = self.feature_axis % x.dim()
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        centre = torch.zeros_like(mean)
        scale = torch.ones_like(std)
        picked = torch.arange(x.shape[axis]) if self.features is None else torch.as_tensor(self.features, dtype=torch.long)
        centre[picked] = mean[picked]
        if self.scale:
            scale[picked] = self.spread(std[picked])
        if sign is not None:
            scale = scale * sign.to(scale.dtype)
        out = (x - centre.view(shape).to(x.dtype)) / scale.view(shape).to(x.dtype)
        if not self.centre:
            if sign is None or bool((sign > 0).all()):
                return x  # nothing to reflect: the inputs exactly as they were
            out = out + centre.view(shape).to(x.dtype)
        return out

    def profile(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """The mean image of ``x`` standardized by ``(mean, std)`` per channel, average-pooled to at most
        :data:`PROFILE_SIDE` pixels a side: ``[C, h, w]``, what a site is oriented by."""
        if x.dim() != 4 or self.feature_axis % 4 != 1:
            raise ValueError(f"orienting a site needs images [n, C, H, W] with channels on axis 1, got inputs of "
                             f"shape {tuple(x.shape)}; orient=True is for imaging layouts only")
        spread = self.spread(std).double().view(1, -1, 1, 1)
        image = (x.detach().double().mean(0, keepdim=True) - mean.double().view(1, -1, 1, 1)) / spread
        side = (min(PROFILE_SIDE, x.shape[2]), min(PROFILE_SIDE, x.shape[3]))
        return F.adaptive_avg_pool2d(image, side)[0].float()

    def signs(self, profile: Tensor) -> Tensor:
        """±1 per channel: -1 where the site's :meth:`profile` correlates negatively with ``reference``."""
        if self.reference is None:
            raise ValueError("this layout orients sites but has no reference profile: the training sites' "
                             "(standardize_federation sets it; a trained model records it)")
        ref = torch.tensor(self.reference, dtype=torch.float64).view(profile.shape)
        site = profile.double().flatten(1)
        ref = ref.flatten(1)
        covariance = ((site - site.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(1)
        return torch.where(covariance < 0, -1.0, 1.0).float()

    def standardize(self, x: Tensor, basis: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Any]]:
        """``x`` standardized by the moments of ``basis`` (default ``x`` itself), and oriented by them when
        :attr:`orient`; returns those moments too (JSON-able, with ``rows``: how many inputs they pooled, and
        ``sign`` when oriented; a personalized model needs them to score future inputs)."""
        basis = x if basis is None else basis
        mean, std = self.moments(basis)
        moments: dict[str, Any] = {"mean": mean.tolist(), "std": std.tolist(), "rows": len(basis)}
        sign = self.signs(self.profile(basis, mean, std)) if self.orient else None
        if sign is not None:
            moments["sign"] = sign.tolist()
        return self.apply(x, mean, std, sign), moments


def reference_profile(layout: SiteStatistics, sites: Sequence["Site"]) -> tuple[tuple[float, ...], ...]:
    """The mean over ``sites`` (the training sites) of each one's standardized, pooled mean image
    (:meth:`SiteStatistics.profile`): ``C`` tuples of ``h * w`` floats. Each site shares only that small
    summary of its inputs, never an image or a label."""
    profiles = []
    for site in sites:
        basis = torch.cat(layout.basis(site))
        profiles.append(layout.profile(basis, *layout.moments(basis)))
    if not profiles:
        raise ValueError("orienting sites needs at least one training site to take the reference mean image from")
    mean = torch.stack(profiles).mean(0)
    return tuple(tuple(float(v) for v in channel.flatten()) for channel in mean)


def describe(recorded: Any) -> str:
    """What the recipe does to a site's inputs, in words, from a model's recorded layout (:attr:`SiteStatistics.record`;
    ``True`` in the oldest models)."""
    mode = {"scale": True, "first_rows": 0} if recorded is True else dict(recorded)
    first = int(mode.get("first_rows", 0))
    basis = f"each unit's first {first} inputs" if first else "all its inputs"
    if not mode.get("centre", True):
        what = ("each site's images are oriented by the training sites' mean image (a site whose mean image is "
                "their negative, e.g. an inverted export, is reflected back about its mean; any other keeps its "
                "images as they are)")
    else:
        what = ("every site's input features are " + ("standardized by" if mode.get("scale", True) else "centred on")
                + " the site's OWN statistics" + (", oriented by the training sites' mean image" if mode.get("orient") else ""))
    return f"{what}, estimated from {basis}, labels never read"


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
        return replace(layout, scale=True, first_rows=0, centre=True, orient=False, reference=None)
    try:
        reference = recorded.get("reference")  # models older than orienting record neither key: not oriented
        return replace(layout, scale=bool(recorded["scale"]), first_rows=int(recorded["first_rows"]),
                       centre=bool(recorded.get("centre", True)), orient=bool(recorded.get("orient", False)),
                       reference=None if reference is None else tuple(tuple(float(v) for v in r) for r in reference))
    except (AttributeError, TypeError, KeyError, ValueError) as err:
        raise ValueError(f"the model's preprocessing.site_statistics (in its fml.json) is {recorded!r}: expected "
                         "true or {'scale': bool, 'first_rows': int[, 'centre': false][, 'orient': true, 'reference': [[...]]]}, as "
                         "the run that trained it wrote; re-register the model rather than edit that file") from err


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
        sign = torch.tensor(moments["sign"]) if "sign" in moments else None
        site.unlabeled = layout.apply(site.unlabeled, torch.tensor(moments["mean"]), torch.tensor(moments["std"]), sign)
    moments["mode"] = {k: v for k, v in layout.record.items() if k != "reference"}
    site.metadata[PREPROCESSING_KEY] = moments
    return moments


def standardize_federation(problem: "Problem") -> None:
    """Standardize every site of ``problem``'s federation by its own inputs (training, validation and
    test sites alike; oriented by the TRAINING sites' reference profile when the layout orients) and record in
    its preprocessing what the model expects (:attr:`SiteStatistics.record`)."""
    layout = layout_of(problem)
    if layout.orient:
        layout = replace(layout, reference=reference_profile(layout, problem.federation.role("train")))
    for site in problem.federation.sites.values():
        standardize_site(problem, site, recorded=layout.record)
    problem.preprocessing[PREPROCESSING_KEY] = layout.record
