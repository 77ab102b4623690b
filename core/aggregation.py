"""Server-side aggregation of client directions, keyed by parameter NAME, never by list position.

Directions arrive stacked: ``{name: Tensor [clients, ...]}`` with one weight per client. Rules are
pure functions registered by name; robust and private rules plug in here.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from core.registry import Registry
from core.types import ClientUpdate, Params

AggregationRule = Callable[[Params, Tensor], Params]
RULES: Registry[AggregationRule] = Registry("aggregation rule")


WeightFn = Callable[[Tensor, Mapping[str, Tensor]], Tensor]
WEIGHTINGS: Registry[WeightFn] = Registry("client weighting")
#: A site's quality adds at most this much weight to its floor of 1 (so one site weighs at most 1 + this
#: times another of the same size, however its loss moved).
QUALITY_BONUS = 1.0


#: (loss before, loss after) metric pairs: MAML-style clients score their query after adapting on the support;
#: FedAvg and Reptile clients the data they trained on.
QUALITY_METRICS = (("train/support_loss_before", "train/query_loss"), ("train/loss_before", "train/loss_after"))


def adaptation_quality(metrics: Mapping[str, Tensor]) -> Tensor:
    """Per client, the relative loss improvement of its local adaptation, clipped to [0, 1]: ``(L0 - L1) / L0``
    (a client whose update did not help, or whose labels are noise, scores 0)."""
    pair = next((p for p in QUALITY_METRICS if all(k in metrics for k in p)), None)
    if pair is None:
        raise ValueError(f"fed.weighting=quality needs one of the client metric pairs {QUALITY_METRICS}; this "
                         f"algorithm reports {sorted(metrics)} (choose another weighting)")
    before, after = (metrics[k].double() for k in pair)
    return ((before - after) / before.clamp_min(1e-12)).nan_to_num(0.0).clamp(0.0, 1.0)


WEIGHTINGS.register("uniform", lambda n, metrics: torch.ones_like(n))
WEIGHTINGS.register("num_examples", lambda n, metrics: n)
WEIGHTINGS.register("quality", lambda n, metrics: n * (1.0 + QUALITY_BONUS
                                                          * adaptation_quality(metrics).to(n.device)))


def client_weights(num_examples: Sequence[int] | Tensor, weighting: str,
                   metrics: Optional[Mapping[str, Tensor]] = None) -> Tensor:
    """Normalized client weights: ``uniform``, ``num_examples`` (by sample count) or ``quality`` (by sample
    count times ``1 + QUALITY_BONUS * adaptation_quality``, from the clients' ``metrics``)."""
    n = torch.as_tensor(num_examples, dtype=torch.float64)
    w = WEIGHTINGS.get(weighting)(n, metrics or {})
    if w.sum() <= 0:
        raise ValueError("client weights sum to zero")
    return (w / w.sum()).float()


def weighted_mean(stacked: Params, weights: Tensor) -> Params:
    out = {}
    for k, v in stacked.items():
        w = weights.to(v.device, v.dtype).reshape(-1, *([1] * (v.dim() - 1)))  # weights are computed on the CPU
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
                    round_index: int, metrics: Optional[Mapping[str, Tensor]] = None,
                    noise: Optional[torch.Generator] = None) -> Params:
    """The server direction of round ``round_index`` under ``fed`` (a ``FederatedConfig``), shared by the
    in-process learner and the Flower core rule: DP-FedAvg's clipped, noised mean when ``fed.dp_clip`` is set,
    else ``fed.aggregation`` with ``fed.weighting``. The noise comes from ``noise`` when given (a deployment's
    server keeps it secret: :func:`core.privacy.secret_generator`), else from (seed, round), so that an
    in-process run is reproducible and resumable."""
    if fed.dp_clip > 0:
        from core.privacy import clip_by_norm, noisy_mean
        from core.seeds import round_generator

        return noisy_mean(clip_by_norm(stacked, fed.dp_clip), fed.clients_per_round, fed.dp_noise, fed.dp_clip,
                          noise if noise is not None else round_generator(seed, round_index, salt=2))
    return aggregate(stacked, client_weights(num_examples, fed.weighting, metrics), fed.aggregation)


def mean_params(states: Sequence[Params]) -> Params:
    """The parameter-wise mean of ``states`` (float64 accumulation), in each parameter's dtype: the one average
    of ``fml run`` (``core.round_averaging``) and of a Flower run (``core.federation.driver``)."""
    first = states[0]
    return {k: (sum(state[k].double() for state in states) / len(states)).to(first[k].dtype) for k in first}
