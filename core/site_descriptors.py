"""Site descriptors and strata: what the diversity sampler stratifies clients over.

A site's descriptor is what it could report as federated statistics without sending rows: the moments
of its input features (the layout of :mod:`core.site_statistics`) and its label distribution
(classification) or target mean and spread (regression). Training sites are clustered on their
standardized descriptors (k-means, seeded), and the diversity sampler (:mod:`core.sampling`) draws
each round's clients across the clusters, so a round spans the task distribution instead of repeating
its most common kind of site.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:
    from core.problem import Problem
    from core.tasks import Site


def describe_site(site: "Site", layout, num_classes: Optional[int]) -> Tensor:
    """``[mean_f..., std_f..., label stats...]`` of one site (float64)."""
    mean, std = layout.moments(site.x)
    y = site.y
    if num_classes is not None:
        labels = torch.bincount(y.long().flatten(), minlength=num_classes).double() / max(y.numel(), 1)
    else:
        yf = y.double().flatten()
        labels = torch.stack([yf.mean(), yf.std(unbiased=False)])
    return torch.cat([mean.double(), std.double(), labels])


def site_strata(problem: "Problem", site_ids: Sequence[str], clusters: int, seed: int) -> list[Tensor]:
    """Member indices (into ``site_ids``) of each of ``clusters`` k-means clusters of the sites' descriptors."""
    import numpy as np
    from sklearn.cluster import KMeans

    descriptors = torch.stack([problem.site_descriptor(sid) for sid in site_ids]).numpy()
    spread = descriptors.std(0)
    z = (descriptors - descriptors.mean(0)) / np.where(spread > 1e-12, spread, 1.0)
    k = max(1, min(clusters, len(site_ids)))
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(z) if k > 1 else np.zeros(len(z), int)
    return [torch.from_numpy(np.flatnonzero(labels == c)) for c in range(k) if (labels == c).any()]
