"""The seeded meta-initialization, one function for the in-process learner and the Flower engine.

Parameters a problem marks ``site_specific`` (a classifier head over labels whose mapping differs per
site) start at zero for meta-learners: zero is the only head that favours no site's mapping, so every
site starts at chance and the inner loop writes its own mapping into the head (Kao et al. 2022, "MAML
is a noisy contrastive learner", the zeroing trick, applied at initialization). FedAvg keeps the
model's default initialization: with a zero head its averaged head stays near zero and its features
barely train (R1: FedAvg + fine-tune falls from about 0.75 to about 0.37 accuracy).
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor
from torch import nn

from core.algorithms.base import Algorithm, InnerConfig
from core.problem import Problem
from core.types import Params


def mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> Optional[str]:
    """How ``given`` parameters differ from the ``expected`` ones, in one line (missing and unexpected names,
    shapes that differ; a few of each), or None when every name and shape agrees."""
    def few(items: list) -> str:
        return ", ".join(map(str, items[:4])) + (f" and {len(items) - 4} more" if len(items) > 4 else "")

    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(expected) & set(given))
              if tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = [f"{label}: {few(items)}" for label, items in
             (("missing", missing), ("unexpected", unexpected), ("other shape (given vs model)", shapes)) if items]
    return "; ".join(parts) or None


def initial_model(problem: Problem, algorithm: Algorithm, seed: int, start: Optional[Params] = None) -> nn.Module:
    """``problem``'s model seeded with ``seed`` (or holding ``start``, e.g. a trained FedAvg model for a warm
    start); site-specific parameters zeroed for meta-learners."""
    torch.manual_seed(seed)
    model = problem.make_model()
    if start is not None:
        named = dict(model.named_parameters())
        differs = mismatch(named, start)
        if differs:
            raise ValueError(f"the warm start parameters do not match the model ({differs}); start from parameters "
                             "trained on the same vertical with the same model options")
        with torch.no_grad():
            for name, value in start.items():
                named[name].copy_(value)
    if algorithm.is_meta and problem.site_specific:
        named = dict(model.named_parameters())
        unknown = sorted(set(problem.site_specific) - set(named))
        if unknown:
            raise ValueError(f"site_specific names {unknown} are not parameters of the model; it has {sorted(named)}")
        with torch.no_grad():
            for name in problem.site_specific:
                named[name].zero_()
    return model


def initial_meta(problem: Problem, algorithm: Algorithm, inner: InnerConfig, seed: int) -> Params:
    """All meta-parameters at round 0: the model's and the algorithm's extras (Meta-SGD step sizes)."""
    meta = {k: v.detach() for k, v in initial_model(problem, algorithm, seed).named_parameters()}
    meta.update({k: v.detach() for k, v in algorithm.init_extra(meta, inner).items()})
    return meta
