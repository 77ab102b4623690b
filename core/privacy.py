"""Site-level differential privacy for the in-process engine: DP-FedAvg's clip-and-noise aggregation
(McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models") and its accountant.

Every sampled site's direction is clipped to L2 norm ``clip`` (over all its tensors together), the
clipped directions are summed and divided by the FIXED number of clients per round (not by how many
answered), and Gaussian noise of standard deviation ``noise_multiplier * clip / clients_per_round`` is
added to that mean. A site is the privacy unit: the guarantee covers everything one site contributes.
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


def noisy_mean(clipped: Params, clients_per_round: int, noise_multiplier: float, clip: float,
               gen: torch.Generator) -> Params:
    """Sum of clipped directions / ``clients_per_round``, plus N(0, (noise_multiplier*clip/clients_per_round)^2)."""
    std = noise_multiplier * clip / clients_per_round
    # the noise is drawn on the CPU (the seeded generator lives there) and moved: the same noise on any device
    return {k: v.sum(0) / clients_per_round + std * torch.randn(v.shape[1:], generator=gen, dtype=v.dtype).to(v.device)
            for k, v in clipped.items()}


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
    import logging

    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    logging.getLogger("absl").setLevel(logging.ERROR)  # it warns per RDP order it cannot evaluate
    event = dp_accounting.PoissonSampledDpEvent(min(sampling_rate, 1.0), dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))
