"""RUL metrics: last-window RMSE per evaluation unit (headline, as in the C-MAPSS literature), RMSE over
all windows, and the asymmetric scoring function of Saxena et al. (2008), which punishes late
predictions (over-estimated RUL) more than early ones."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def nasa_score(pred: Tensor, target: Tensor) -> Tensor:
    """Per-unit PHM08 score ``exp(-d/13) - 1`` if ``d < 0`` else ``exp(d/10) - 1``, ``d = pred - target``."""
    d = pred - target
    return torch.where(d < 0, torch.exp(-d / 13.0) - 1.0, torch.exp(d / 10.0) - 1.0)


def rul_metrics(pred: Tensor, target: Tensor, last: Tensor) -> dict[str, float]:
    """Metrics of predicted RUL on evaluation windows.

    Args:
        pred: predicted RUL ``[n]`` (cycles).
        target: true (capped) RUL ``[n]``.
        last: boolean mask ``[n]`` of each evaluation unit's evaluation window (one per unit).

    Returns:
        ``rmse_last`` (headline, lower is better), ``mae_last``, ``bias_last`` (mean ``pred - target``:
        positive = late, RUL over-estimated), ``rmse_all``, ``nasa_score`` (sum over units, as published),
        ``nasa_per_unit`` (mean, comparable across sites) and ``units``.
    """
    pred, target = pred.reshape(-1).double(), target.reshape(-1).double()
    d_last = pred[last] - target[last]
    score = nasa_score(pred[last], target[last])
    return {
        "rmse_last": math.sqrt(float((d_last**2).mean())),
        "mae_last": float(d_last.abs().mean()),
        "bias_last": float(d_last.mean()),
        "rmse_all": math.sqrt(float(((pred - target) ** 2).mean())),
        "nasa_score": float(score.sum()),
        "nasa_per_unit": float(score.mean()),
        "units": float(last.sum()),
    }
