"""Diagnostic metrics (torchmetrics) and the decision threshold chosen on the support set.

Headline: AUROC (binary), macro one-vs-rest AUROC (multi-class). AUROC does not depend on a threshold,
but balanced accuracy, sensitivity and specificity do, and a shifted clinic moves the model's scores:
the reference run lost about 0.1 balanced accuracy at 1 image per class with the default 0.5 cut-off.
So the threshold is part of what adaptation sets: for binary tasks, after adapting on the support set,
the decision threshold on the log-odds is the one that maximizes Youden's J (sensitivity + specificity
minus 1) ON THE SUPPORT SET (midpoint between adjacent support scores; the middle of tied maxima); when the
support gives no information (best J <= 0) it stays at log-odds 0 (probability 0.5). Scored images
never influence it. Multi-class predictions use the arg-max (no threshold); sensitivity is then the
macro recall and specificity the macro specificity.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    multiclass_auroc,
    multiclass_recall,
    multiclass_specificity,
)

from core.registry import Registry


def log_odds(logits: Tensor) -> Tensor:
    """Binary score: ``logit[1] - logit[0]`` (the log-odds of class 1 under the softmax)."""
    return logits[:, 1] - logits[:, 0]


def youden_threshold(scores: Tensor, labels: Tensor) -> float:
    """Threshold on ``scores`` maximizing Youden's J on (``scores``, binary ``labels``); 0 if J <= 0."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if pos.numel() == 0 or neg.numel() == 0:
        return 0.0
    u = torch.unique(scores)
    cands = torch.cat([u[:1] - 1.0, (u[1:] + u[:-1]) / 2, u[-1:] + 1.0])
    sens = (pos[None, :] >= cands[:, None]).float().mean(1)
    spec = (neg[None, :] < cands[:, None]).float().mean(1)
    j = sens + spec - 1
    best = torch.nonzero(j >= j.max() - 1e-9).flatten()
    if float(j.max()) <= 0:
        return 0.0
    return float(cands[best[best.numel() // 2]])


#: threshold rule name -> ``rule(support_logits, support_labels) -> log-odds threshold``.
THRESHOLDS: Registry[Callable[[Tensor, Tensor], float]] = Registry("threshold rule")
THRESHOLDS.register("support", lambda logits, y: youden_threshold(log_odds(logits), y))
THRESHOLDS.register("fixed", lambda logits, y: 0.0)


def imaging_metrics(logits: Tensor, targets: Tensor, threshold: Optional[float] = None) -> dict[str, float]:
    """AUROC, balanced accuracy, sensitivity, specificity, accuracy and loss of ``logits [n, K]``.

    Args:
        logits: model outputs ``[n, K]``.
        targets: class ids ``[n]``.
        threshold: binary only: log-odds cut-off (``None`` = 0, i.e. probability 0.5).
    """
    k = logits.shape[1]
    targets = targets.long()
    loss = float(torch.nn.functional.cross_entropy(logits, targets))
    if k == 2:
        t = 0.0 if threshold is None else float(threshold)
        score = log_odds(logits)
        pred = (score >= t).long()
        pos, neg = targets == 1, targets == 0
        sens = float((pred[pos] == 1).float().mean()) if pos.any() else float("nan")
        spec = float((pred[neg] == 0).float().mean()) if neg.any() else float("nan")
        auroc = float(binary_auroc(torch.sigmoid(score), targets)) if pos.any() and neg.any() else float("nan")
        return {"auroc": auroc, "balanced_accuracy": (sens + spec) / 2, "sensitivity": sens, "specificity": spec,
                "accuracy": float((pred == targets).float().mean()), "threshold": float(torch.sigmoid(torch.tensor(t))),
                "loss": loss}
    probs = logits.softmax(-1)
    pred = logits.argmax(-1)
    recall = float(multiclass_recall(pred, targets, num_classes=k, average="macro"))
    return {"auroc": float(multiclass_auroc(probs, targets, num_classes=k, average="macro")),
            "balanced_accuracy": recall, "sensitivity": recall,
            "specificity": float(multiclass_specificity(pred, targets, num_classes=k, average="macro")),
            "accuracy": float((pred == targets).float().mean()), "loss": loss}
