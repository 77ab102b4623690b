"""Meta-SGD with ONE learned step size per parameter tensor: per layer, as MAML++'s learned per-layer step
sizes (Antoniou et al. ICLR 2019, without their per-step schedule).

Meta-SGD learns a step size per weight, as many extra meta-parameters as the model has; one per tensor is
a few dozen, yet lets the body, the head and a context vector move at their own learned speeds. The client
update is Meta-SGD's (the step sizes broadcast over their tensor), so everything that adapts with learned
step sizes -- evaluation, the per-site choice, onboarding -- treats both alike.
"""
from __future__ import annotations

import torch

from core.algorithms.base import ALGORITHMS, LR_PREFIX, Algorithm, InnerConfig
from core.algorithms.metasgd import metasgd_update
from core.types import Params


def init_layer_step_sizes(params: Params, cfg: InnerConfig) -> Params:
    """``inner_lr/<name>``: one scalar per parameter tensor ``<name>``, all ``cfg.lr``."""
    return {LR_PREFIX + k: torch.full((), cfg.lr, dtype=v.dtype, device=v.device) for k, v in params.items()}


ALGORITHMS.register(
    "metasgd-layer",
    Algorithm("metasgd-layer", metasgd_update, "Meta-SGD with one learned inner step size per layer (tensor)",
              init_extra=init_layer_step_sizes, supports_rollouts=False),
)
