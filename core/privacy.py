"""Site-level differential privacy for the in-process engine: DP-FedAvg's clip-and-noise aggregation
(McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models") and its accountant.

Every sampled site's direction is clipped to L2 norm ``clip`` (over all its tensors together), the
clipped directions are summed and divided by the FIXED number of clients per round (not by how many
answered), and Gaussian noise of standard deviation ``noise_multiplier * clip / clients_per_round`` is
added to that mean. A site is the privacy unit: the guarantee covers everything one site contributes.

Under secure aggregation (Flower's SecAgg+) the server never holds a single direction, so the same
mechanism is split the way Flower's client-side fixed clipping splits it: each site clips its own
direction (:func:`clip_update`), the protocol reveals only the sum, and the server releases
:func:`noisy_sum` of it -- the in-process ``noisy_mean`` with the sum computed elsewhere.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from core.types import Params


def clip_by_norm(stacked: Params, clip: float) -> Params:
    """Scale each client's direction (index 0 of every ``[clients, ...]`` tensor) to L2 norm <= ``clip``."""
    flat = torch.cat([v.reshape(v.shape[0], -1) for v in stacked.values()], dim=1)
    scale = (clip / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return {k: v * scale.reshape(-1, *([1] * (v.dim() - 1))) for k, v in stacked.items()}


def clip_update(direction: Params, clip: float) -> Params:
    """ONE client's direction ``{name: Tensor}`` scaled to L2 norm <= ``clip`` over all its tensors together
    (:func:`clip_by_norm` of a single client: what a site does itself before secure aggregation)."""
    return {k: v[0] for k, v in clip_by_norm({k: v.unsqueeze(0) for k, v in direction.items()}, clip).items()}


def noise_std(clients_per_round: int, noise_multiplier: float, clip: float) -> float:
    """Per-coordinate standard deviation of DP-FedAvg's noise on the mean (``noise_multiplier * clip /
    clients_per_round``: one site moves the mean by at most ``clip / clients_per_round``)."""
    return noise_multiplier * clip / clients_per_round


def noisy_sum(summed: Params, clients_per_round: int, noise_multiplier: float, clip: float,
              gen: torch.Generator) -> Params:
    """The SUM of clipped directions / ``clients_per_round``, plus N(0, noise_std^2) per coordinate."""
    std = noise_std(clients_per_round, noise_multiplier, clip)
    # the noise is drawn on the CPU (the seeded generator lives there) and moved: the same noise on any device
    return {k: v / clients_per_round + std * torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
            for k, v in summed.items()}


def noisy_mean(clipped: Params, clients_per_round: int, noise_multiplier: float, clip: float,
               gen: torch.Generator) -> Params:
    """Sum of clipped directions / ``clients_per_round``, plus N(0, (noise_multiplier*clip/clients_per_round)^2)."""
    return noisy_sum({k: v.sum(0) for k, v in clipped.items()}, clients_per_round, noise_multiplier, clip, gen)


def secret_generator() -> torch.Generator:
    """A generator seeded from the operating system's randomness. Noise that must stay secret uses it: a
    noise stream seeded by the run's seed (which every node receives) could be regenerated and subtracted."""
    import secrets

    return torch.Generator().manual_seed(secrets.randbits(63))


def run_epsilon(fed: Any, num_train_sites: int, rounds: int) -> float:
    """Site-level epsilon after ``rounds`` rounds of a run with ``fed`` (a ``FederatedConfig``): sites
    sampled at rate ``clients_per_round / num_train_sites``; ``inf`` without noise."""
    return epsilon(rounds, fed.clients_per_round / num_train_sites, fed.dp_noise, fed.dp_delta)


def epsilon(rounds: int, sampling_rate: float, noise_multiplier: float, delta: float) -> float:
    """(epsilon, delta)-DP of ``rounds`` rounds of the subsampled Gaussian mechanism (RDP accountant of
    ``dp_accounting``; sites treated as Poisson-sampled with probability ``sampling_rate``, the usual
    approximation of sampling a fixed number per round). ``inf`` without noise."""
    if noise_multiplier <= 0:
        return math.inf
    if rounds <= 0:
        return 0.0
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    # absl logs one warning per RDP order it cannot evaluate: the CLI drops those (pipelines.process_setup);
    # a library leaves its caller's logging alone
    event = dp_accounting.PoissonSampledDpEvent(min(sampling_rate, 1.0), dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))
