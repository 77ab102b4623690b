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


def misclassified(logits: Tensor, targets: Tensor) -> float:
    """The fraction of rows whose highest logit is not their class."""
    return float((logits.argmax(-1) != targets.reshape(-1)).float().mean())


def misordered_pairs(scores: Tensor, labels: Tensor) -> float:
    """1 - AUROC of ``scores`` for binary ``labels``: the fraction of (positive, negative) pairs ranked the wrong
    way round, a tie counting half; 0.0 when a class is absent."""
    s, y = scores.reshape(-1).float(), labels.reshape(-1).bool()
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return 0.0
    diff = pos[:, None] - neg[None, :]
    return float(((diff < 0).float() + 0.5 * (diff == 0).float()).mean())


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
