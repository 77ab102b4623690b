"""Small metric helpers shared by verticals and the evaluation protocol."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def accuracy_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    return {
        "accuracy": float((logits.argmax(-1) == targets).float().mean()),
        "loss": float(torch.nn.functional.cross_entropy(logits, targets)),
    }


def mse_metrics(pred: Tensor, targets: Tensor) -> dict[str, float]:
    mse = float(torch.mean((pred.reshape(targets.shape) - targets) ** 2))
    return {"mse": mse, "rmse": math.sqrt(mse)}


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and Student-t 95% interval of ``values`` (the interval collapses for one value)."""
    a = np.asarray(values, dtype=float)
    m = float(a.mean())
    if a.size < 2 or float(a.std()) == 0.0:
        return m, m, m
    from scipy import stats  # lazy: scipy costs ~1 s of start-up in every Flower ClientApp process

    half = float(stats.t.ppf(0.975, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return m, m - half, m + half
