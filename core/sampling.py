"""Per-round client sampling, seeded: uniform, weighted by site size, or stratified over clusters of site
descriptors (diversity), with simulated dropout."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from core.registry import Registry

SAMPLERS: Registry = Registry("client sampler")
#: Samplers that need strata (``core.site_descriptors.site_strata``) of the training sites.
NEEDS_STRATA = {"diversity"}


class SiteSizes(Sequence[int]):
    """The sizes of ``site_ids``, each read when a sampler first asks (a uniform sampler never does, so a lazy site
    whose size is only known once built is never built just to be counted)."""

    def __init__(self, site_ids: Sequence[str], size_of: Callable[[str], int]) -> None:
        self.site_ids, self.size_of = site_ids, size_of
        self._known: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.site_ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i not in self._known:
            self._known[i] = self.size_of(self.site_ids[i])
        return self._known[i]


def uniform(site_ids: Sequence[str], sizes: Sequence[int], k: int, gen: torch.Generator,
            strata: Optional[list[Tensor]] = None) -> list[str]:
    idx = torch.randperm(len(site_ids), generator=gen)[:k]
    return [site_ids[i] for i in idx.tolist()]


def size_weighted(site_ids: Sequence[str], sizes: Sequence[int], k: int, gen: torch.Generator,
                  strata: Optional[list[Tensor]] = None) -> list[str]:
    w = torch.as_tensor(list(sizes), dtype=torch.float64)
    idx = torch.multinomial(w, min(k, len(site_ids)), replacement=False, generator=gen)
    return [site_ids[i] for i in idx.tolist()]


def diversity(site_ids: Sequence[str], sizes: Sequence[int], k: int, gen: torch.Generator,
              strata: Optional[list[Tensor]] = None) -> list[str]:
    """``k`` clients spread over the strata: slots go round-robin over the strata in a seeded order (every
    stratum gets one before any gets two), each stratum's clients drawn uniformly without replacement."""
    if not strata:
        raise ValueError("the diversity sampler needs the training sites' strata (core.site_descriptors.site_strata)")
    order = torch.randperm(len(strata), generator=gen).tolist()
    want = [0] * len(strata)
    left = min(k, sum(len(s) for s in strata))
    while left:
        for c in order:
            if left and want[c] < len(strata[c]):
                want[c] += 1
                left -= 1
    chosen: list[int] = []
    for c in order:
        if want[c]:
            members = strata[c]
            chosen += members[torch.randperm(len(members), generator=gen)[: want[c]]].tolist()
    return [site_ids[i] for i in chosen]


SAMPLERS.register("uniform", uniform)
SAMPLERS.register("size", size_weighted)
SAMPLERS.register("diversity", diversity)


def sample_clients(
    site_ids: Sequence[str],
    sizes: Sequence[int],
    k: int,
    gen: torch.Generator,
    strategy: str = "uniform",
    dropout: float = 0.0,
    strata: Optional[list[Tensor]] = None,
) -> list[str]:
    """Pick ``k`` distinct clients; each then drops out with probability ``dropout`` (at least one stays)."""
    if not site_ids:
        raise ValueError("no training sites to sample clients from")
    chosen = SAMPLERS.get(strategy)(site_ids, sizes, min(k, len(site_ids)), gen, strata)
    if dropout > 0:
        keep = (torch.rand(len(chosen), generator=gen) >= dropout).tolist()
        kept = [c for c, ok in zip(chosen, keep) if ok]
        chosen = kept or chosen[:1]
    return chosen
