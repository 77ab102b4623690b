"""DP-FedAvg under SecAgg+: ``core.privacy``'s mechanism split between the sites and the server, the way
Flower's client-side fixed clipping splits it (``flwr.clientapp.mod.fixedclipping_mod`` on the nodes,
``DifferentialPrivacyClientSideFixedClipping`` on the server).

1. Each sampled site clips its OWN direction to L2 norm ``fed.dp_clip`` over all its tensors
   (``core.privacy.clip_update``, the norm of the in-process ``clip_by_norm``) before SecAgg+ masks it; the
   bound travels in the round's instructions as ``fml.dp-clip``.
2. SecAgg+ reveals only the mean of the included sites (uniform weights: every site weighs 1); the server
   turns it back into their sum.
3. The server releases DP-FedAvg's noisy mean of that sum (``core.privacy.noisy_sum``: divided by the FIXED
   ``fed.clients_per_round``, N(0, (dp_noise * dp_clip / clients_per_round)^2) per coordinate). The noise
   comes from a generator seeded by the operating system, not by the run's seed: every node knows that seed
   and could otherwise regenerate the noise and subtract it.

The released direction therefore has the in-process DP-FedAvg's distribution (same clip, same noise, same
denominator), and the accountant (``core.privacy.run_epsilon``) applies unchanged. Unlike in-process, the
noise is not reproducible from the seed: equality with in-process holds in distribution, not bit for bit.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from core.types import Params


def check_secure_dp(fed: Any, flower: Any) -> None:
    """Raise ``ValueError`` when DP-FedAvg (``fed.dp_clip``) and SecAgg+ (``flower.secagg``) cannot run
    together as configured; a no-op when either is off."""
    if not (flower.secagg and fed.dp_clip > 0):
        return
    if fed.dp_clip > flower.secagg_clip:
        # a direction of L2 norm <= dp_clip has every entry in [-dp_clip, dp_clip]; SecAgg+ clips entries to
        # [-secagg_clip, secagg_clip] before quantizing, which would change a DP-clipped direction
        raise ValueError(f"fed.dp_clip={fed.dp_clip:g} exceeds flower.secagg_clip={flower.secagg_clip:g}: SecAgg+ "
                         "clips every entry of an update to [-secagg_clip, secagg_clip] before quantizing, which "
                         "would alter a DP-clipped update; set flower.secagg_clip >= fed.dp_clip (e.g. "
                         f"flower.secagg_clip={fed.dp_clip:g}) or lower fed.dp_clip")


def privacy_mode(fed: Any, flower: Any) -> str:
    """How a Flower run protects the sites' updates, in words (logged with the run)."""
    if fed.dp_clip <= 0:
        return "secagg+" if flower.secagg else "none"
    where = " to the secure sum" if flower.secagg else ""
    noise = f"server adds noise{where}" if fed.dp_noise > 0 else "no noise: dp_noise=0"
    return f"secagg+ & dp-fedavg (sites clip; {noise})" if flower.secagg else f"dp-fedavg (server clips; {noise})"


def unit_weight(flower: Any) -> float:
    """The factor SecAgg+ scales a weight-1 update by before quantizing (``round(Q / max_weight) / Q``)."""
    q = int(flower.secagg_quantization)
    return round(q / float(flower.secagg_max_weight or 1.0)) / q


def secure_sum(mean: "Params", included: int) -> "Params":
    """The sum of the included sites' clipped directions from SecAgg+'s mean (every site weighs 1)."""
    return {k: v * included for k, v in mean.items()}


def check_bound(total: "Params", included: int, fed: Any, flower: Any) -> None:
    """Raise ``ValueError`` if ``total`` cannot be a sum of ``included`` directions of norm <= ``fed.dp_clip``.

    Honest sites cannot break the bound (allowing SecAgg+'s per-entry rounding); a site that tampers with
    the protocol's weight factor scales the whole aggregate, and with it the other sites' contributions,
    which the noise would then no longer cover. Such a round must not be released.
    """
    size = sum(v.numel() for v in total.values())
    step = 2.0 * flower.secagg_clip / int(flower.secagg_quantization) / unit_weight(flower)
    limit = included * (fed.dp_clip + step * math.sqrt(size)) * (1 + 1e-5)
    norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in total.values()))
    if norm > limit:
        raise ValueError(f"secure sum has L2 norm {norm:.4g} > {included} sites x fed.dp_clip={fed.dp_clip:g} "
                         "(a site tampered with its SecAgg+ weight?); round not released")


def release(mean: "Params", included: int, fed: Any, flower: Any, gen: "torch.Generator") -> "Params":
    """DP-FedAvg's noisy mean from SecAgg+'s mean of ``included`` site-clipped directions (``ValueError``
    when the sum breaks the clip bound, see :func:`check_bound`)."""
    from core.privacy import noisy_sum

    total = secure_sum(mean, included)
    check_bound(total, included, fed, flower)
    return noisy_sum(total, fed.clients_per_round, fed.dp_noise, fed.dp_clip, gen)
