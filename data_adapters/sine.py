"""The sine-wave regression family of MAML (Finn et al. 2017), GENERATED data.

Each site is a sinusoid ``y = A sin(x - phase)`` with amplitude A in [0.1, 5] and phase in [0, pi],
inputs uniform in [-5, 5]. Used by the engine's tests and as a tiny demo.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.tasks import Federation, Site


@dataclass
class SineData:
    """Options of the generated sine federation."""

    train_sites: int = 200
    """Meta-training sites (sinusoids)."""
    validation_sites: int = 10
    """Validation sites."""
    test_sites: int = 20
    """Held-out test sites."""
    points_per_site: int = 100
    """Generated (x, y) pairs per site."""


def make_sine_site(site_id: str, gen: torch.Generator, n: int) -> Site:
    amp = 0.1 + 4.9 * torch.rand((), generator=gen)
    phase = math.pi * torch.rand((), generator=gen)
    x = 10.0 * torch.rand(n, 1, generator=gen) - 5.0
    return Site(site_id, x, amp * torch.sin(x - phase), metadata={"amplitude": float(amp), "phase": float(phase)})


def build_sine_federation(cfg: SineData, seed: int) -> Federation:
    gen = torch.Generator().manual_seed(seed)
    roles = {"train": cfg.train_sites, "validation": cfg.validation_sites, "test": cfg.test_sites}
    sites, ids = [], {}
    for role, count in roles.items():
        ids[role] = [f"{role}-{i:03d}" for i in range(count)]
        sites += [make_sine_site(sid, gen, cfg.points_per_site) for sid in ids[role]]
    return Federation({s.site_id: s for s in sites}, ids)
