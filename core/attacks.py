"""Simulated poisoning: a seeded share of the training sites send manipulated updates (for measuring
aggregation rules, like ``fed.dropout`` simulates sites that do not answer).

``scale`` multiplies an attacker's direction by ``scale`` (a boosted update); ``sign_flip`` sends
``-scale`` times it (the classic model-poisoning step against the descent direction). Which sites attack
depends only on (seed, site id), so every round, every aggregation rule and a resumed run face the same
attackers. Pure functions: the learner applies them to a round's stacked directions before aggregation.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch

from core.registry import Registry
from core.types import Params

ATTACKS: Registry[Callable[[torch.Tensor, float], torch.Tensor]] = Registry("attack")
ATTACKS.register("none", lambda d, scale: d)
ATTACKS.register("scale", lambda d, scale: d * scale)
ATTACKS.register("sign_flip", lambda d, scale: -scale * d)


def is_attacker(seed: int, site_id: str, fraction: float) -> bool:
    """Whether ``site_id`` is one of the attacking sites (a seeded, fixed share ``fraction`` of all sites)."""
    if fraction <= 0:
        return False
    # a Bernoulli draw, not a seed, so not core.seeds.site_seed: that hash would pick other attackers
    # (40-51 of 100 R1 sites differ at 30%) and change benchmarks/poisoning.py's published table
    digest = hashlib.sha256(f"attack:{seed}:{site_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def poison(stacked: Params, site_ids: Sequence[str], seed: int, kind: str, fraction: float, scale: float) -> Params:
    """``stacked`` (``[clients, ...]`` per parameter, rows in ``site_ids`` order) with the attackers' rows
    replaced by their attack."""
    attack = ATTACKS.get(kind)
    rows = [i for i, sid in enumerate(site_ids) if is_attacker(seed, sid, fraction)]
    if kind == "none" or not rows:
        return stacked
    idx = torch.tensor(rows)
    out = {}
    for k, v in stacked.items():
        v = v.clone()
        v[idx] = attack(v[idx], scale)
        out[k] = v
    return out
