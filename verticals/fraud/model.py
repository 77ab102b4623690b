"""Model and losses of the fraud vertical (pure functions; vmap-safe losses); metrics: ``metrics.py``.

- Model: an MLP on the preprocessed (standardized + one-hot) claim features, one logit per row.
- Losses (registry ``LOSSES``): ``bce`` (binary cross-entropy with ``pos_weight``) and ``focal``
  (Lin et al. 2017, "Focal Loss for Dense Object Detection"): both see balanced episodes (k frauds +
  k non-frauds), so imbalance is handled by the sampling; focal additionally down-weights the easy
  examples that dominate real claim streams.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from core.registry import Registry

Criterion = Callable[[Tensor, Tensor], Tensor]

LOSSES: Registry[Callable[..., Criterion]] = Registry("fraud loss")


def make_mlp(n_features: int, hidden: Sequence[int]) -> nn.Module:
    """MLP ``n_features -> hidden... -> 1`` with ReLU (no BatchNorm/dropout: vmap-safe)."""
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def bce_loss(logits: Tensor, targets: Tensor, pos_weight: float = 1.0) -> Tensor:
    """Binary cross-entropy on logits ``[n, 1]`` / targets ``[n]`` (0/1), positives weighted ``pos_weight``."""
    z, y = logits.reshape(-1), targets.reshape(-1).to(logits.dtype)
    w = 1.0 + (pos_weight - 1.0) * y
    return (w * F.binary_cross_entropy_with_logits(z, y, reduction="none")).sum() / w.sum()


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.5) -> Tensor:
    """Focal loss ``-a_t (1 - p_t)^gamma log p_t``; ``alpha`` weights positives (0.5 = symmetric)."""
    z, y = logits.reshape(-1), targets.reshape(-1).to(logits.dtype)
    log_p = F.logsigmoid(z)
    log_not_p = F.logsigmoid(-z)
    log_pt = y * log_p + (1 - y) * log_not_p
    a_t = 2.0 * (y * alpha + (1 - y) * (1 - alpha))
    return (-a_t * (1 - log_pt.exp()).pow(gamma) * log_pt).mean()


LOSSES.register("bce", lambda pos_weight=1.0, **_: partial(bce_loss, pos_weight=pos_weight))
LOSSES.register("focal", lambda gamma=2.0, alpha=0.5, **_: partial(focal_loss, gamma=gamma, alpha=alpha))


def make_criterion(name: str, *, pos_weight: float = 1.0, gamma: float = 2.0, alpha: float = 0.5) -> Criterion:
    """The loss ``name`` from :data:`LOSSES` with its options."""
    return LOSSES.get(name)(pos_weight=pos_weight, gamma=gamma, alpha=alpha)
