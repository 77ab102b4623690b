"""Metrics of the fraud vertical at the site's NATURAL fraud rate: ``average_precision`` (PR-AUC, the
headline), ``roc_auc``, ``recall_at_1pct_fpr`` and the held-out ``base_rate`` (the PR-AUC of a random scorer).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import Tensor
from torch.nn import functional as F


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, max_fpr: float = 0.01) -> float:
    """Highest recall (TPR) reachable with a false-positive rate <= ``max_fpr``."""
    fpr, tpr, _ = roc_curve(y, scores)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def score_metrics(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Ranking metrics of fraud scores (any monotone score: logits or probabilities)."""
    y = np.asarray(y).astype(int).reshape(-1)
    scores = np.asarray(scores, dtype=float).reshape(-1)
    base = float(y.mean()) if y.size else float("nan")
    if y.size == 0 or y.min() == y.max():  # one class only: ranking metrics undefined
        return {"average_precision": float("nan"), "roc_auc": float("nan"), "recall_at_1pct_fpr": float("nan"),
                "base_rate": base}
    return {"average_precision": float(average_precision_score(y, scores)),
            "roc_auc": float(roc_auc_score(y, scores)),
            "recall_at_1pct_fpr": recall_at_fpr(y, scores, 0.01),
            "base_rate": base}


def fraud_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """:func:`score_metrics` of model logits ``[n, 1]`` plus the unweighted log-loss."""
    z = logits.detach().reshape(-1).float()
    y = targets.reshape(-1)
    out = score_metrics(z.numpy(), y.numpy())
    loss = float(F.binary_cross_entropy_with_logits(z, y.float()))
    out["log_loss"] = loss if math.isfinite(loss) else float("nan")
    return out
