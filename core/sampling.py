"""Per-round client sampling, seeded: uniform or weighted by site size, with simulated dropout."""
from __future__ import annotations

from typing import Sequence

import torch

from core.registry import Registry

SAMPLERS: Registry = Registry("client sampler")


def uniform(site_ids: Sequence[str], sizes: Sequence[int], k: int, gen: torch.Generator) -> list[str]:
    idx = torch.randperm(len(site_ids), generator=gen)[:k]
    return [site_ids[i] for i in idx.tolist()]


def size_weighted(site_ids: Sequence[str], sizes: Sequence[int], k: int, gen: torch.Generator) -> list[str]:
    w = torch.as_tensor(sizes, dtype=torch.float64)
    idx = torch.multinomial(w, min(k, len(site_ids)), replacement=False, generator=gen)
    return [site_ids[i] for i in idx.tolist()]


SAMPLERS.register("uniform", uniform)
SAMPLERS.register("size", size_weighted)


def sample_clients(
    site_ids: Sequence[str],
    sizes: Sequence[int],
    k: int,
    gen: torch.Generator,
    strategy: str = "uniform",
    dropout: float = 0.0,
) -> list[str]:
    """Pick ``k`` distinct clients; each then drops out with probability ``dropout`` (at least one stays)."""
    if not site_ids:
        raise ValueError("no training sites to sample clients from")
    chosen = SAMPLERS.get(strategy)(list(site_ids), list(sizes), min(k, len(site_ids)), gen)
    if dropout > 0:
        keep = (torch.rand(len(chosen), generator=gen) >= dropout).tolist()
        kept = [c for c, ok in zip(chosen, keep) if ok]
        chosen = kept or chosen[:1]
    return chosen
