"""Losses that are fast both eagerly and under ``torch.func`` transforms."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.autodiff import transform_active


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over integer class targets.

    Under ``vmap`` ``F.cross_entropy`` goes through a slow decomposition, so there it is written with
    ``gather`` (same value; R1 vmapped round about 10% faster); eagerly ``F.cross_entropy``'s fused
    kernel is faster (R1 eager gradient step 0.29 vs 0.36 ms).
    """
    if transform_active():
        return -logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).mean()
    return F.cross_entropy(logits, targets)
