"""Shared value types of the engine.

Parameters are plain ``dict[str, Tensor]`` keyed like ``state_dict`` so they map 1:1 onto
Flower's ``ArrayRecord`` and MLflow's saved models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

Params = dict[str, Tensor]
Batch = tuple[Tensor, ...]
#: A pure loss of parameters on a batch: ``loss_fn(params, batch) -> scalar``.
LossFn = Callable[[Params, Batch], Tensor]


@dataclass
class Episode:
    """One few-shot task drawn from one site.

    Args:
        support: tensors the inner loop adapts on, e.g. ``(x [n_s, ...], y [n_s])``.
        query: tensors the outer (meta) loss is measured on, same layout as ``support``.
        site_id: the site the episode came from.
        query_fn: for tasks whose query data the client produces itself from the ADAPTED
            parameters (robotics: rollouts of the adapted policy). Used only by first-order
            algorithms; ``query`` is ignored when it is set.
    """

    support: Batch
    query: Batch
    site_id: str = ""
    query_fn: Optional[Callable[[Params], Batch]] = None

    def query_for(self, adapted: Params) -> Batch:
        if self.query_fn is None:
            return self.query
        return self.query_fn({k: v.detach() for k, v in adapted.items()})

    @property
    def num_examples(self) -> int:
        return int(self.support[0].shape[0]) + int(self.query[0].shape[0]) if self.query else int(self.support[0].shape[0])


@dataclass
class ClientUpdate:
    """What a client sends back: a gradient-like ``direction`` for the server optimizer
    (the server does ``params -= lr * direction``), its aggregation weight and scalar metrics."""

    direction: Params
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    client_id: str = ""


def detach_params(params: Params) -> Params:
    return {k: v.detach().clone() for k, v in params.items()}


def params_allclose(a: Params, b: Params, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=rtol) for k in a)
