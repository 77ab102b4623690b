"""Server-side aggregation of client directions, keyed by parameter NAME, never by list position.

Directions arrive stacked: ``{name: Tensor [clients, ...]}`` with one weight per client. Rules are
pure functions registered by name; robust and private rules plug in here.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from core.registry import Registry
from core.types import ClientUpdate, Params

AggregationRule = Callable[[Params, Tensor], Params]
RULES: Registry[AggregationRule] = Registry("aggregation rule")


def client_weights(num_examples: Sequence[int] | Tensor, weighting: str) -> Tensor:
    """Normalized client weights: ``uniform`` or ``num_examples`` (by sample count)."""
    n = torch.as_tensor(num_examples, dtype=torch.float64)
    if weighting == "uniform":
        w = torch.ones_like(n)
    elif weighting == "num_examples":
        w = n
    else:
        raise ValueError(f"unknown weighting {weighting!r}; choose uniform or num_examples")
    if w.sum() <= 0:
        raise ValueError("client weights sum to zero")
    return (w / w.sum()).float()


def weighted_mean(stacked: Params, weights: Tensor) -> Params:
    out = {}
    for k, v in stacked.items():
        w = weights.to(v.dtype).reshape(-1, *([1] * (v.dim() - 1)))
        out[k] = (w * v).sum(0)
    return out


def coordinate_median(stacked: Params, weights: Tensor) -> Params:
    return {k: v.median(dim=0).values for k, v in stacked.items()}


def trimmed_mean(stacked: Params, weights: Tensor, trim: float = 0.2) -> Params:
    out = {}
    for k, v in stacked.items():
        n = v.shape[0]
        cut = int(n * trim)
        s = v.sort(dim=0).values
        out[k] = s[cut : n - cut].mean(0) if n - 2 * cut > 0 else s.median(0).values
    return out


RULES.register("mean", weighted_mean)
RULES.register("median", coordinate_median)
RULES.register("trimmed_mean", trimmed_mean)


def aggregate(stacked: Params, weights: Tensor, rule: str = "mean") -> Params:
    return RULES.get(rule)(stacked, weights)


def stack_updates(updates: Sequence[ClientUpdate]) -> tuple[Params, Tensor]:
    """Stack per-client updates (e.g. received over the network) into the aggregation layout."""
    if not updates:
        raise ValueError("no client updates to aggregate")
    keys = updates[0].direction.keys()
    for u in updates:
        if u.direction.keys() != keys:
            raise ValueError(f"client {u.client_id!r} sent parameters {sorted(u.direction)}; expected {sorted(keys)}")
    stacked = {k: torch.stack([u.direction[k] for u in updates]) for k in keys}
    return stacked, torch.tensor([u.num_examples for u in updates])


def aggregate_round(stacked: Params, num_examples: Sequence[int] | Tensor, fed: Any, seed: int,
                    round_index: int) -> Params:
    """The server direction of round ``round_index`` under ``fed`` (a ``FederatedConfig``), shared by the
    in-process learner and the Flower core rule: DP-FedAvg's clipped, noised mean (noise seeded by
    (seed, round)) when ``fed.dp_clip`` is set, else ``fed.aggregation`` with ``fed.weighting``."""
    if fed.dp_clip > 0:
        from core.privacy import clip_by_norm, noisy_mean
        from core.tasks import round_generator

        return noisy_mean(clip_by_norm(stacked, fed.dp_clip), fed.clients_per_round, fed.dp_noise, fed.dp_clip,
                          round_generator(seed, round_index, salt=2))
    return aggregate(stacked, client_weights(num_examples, fed.weighting), fed.aggregation)
