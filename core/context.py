"""Context vectors (CAVIA, Zintgraf et al. ICML 2019): a site's identity as a few extra inputs.

A :class:`ContextVector` holds ``dim`` zero-initialized numbers and appends them to every row of its input.
Meta-training adapts ONLY the context in the inner loop (``cavia``, :mod:`core.algorithms.cavia`) while the
outer loop learns the weights that read it; a new site then adapts ``dim`` numbers instead of every weight
(the ``context`` recipe, :mod:`core.recipes`). The parameter's name ends in ``context``
(:data:`CONTEXT`), which is how groups and recipes find it.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

CONTEXT = "context"
#: What a user does about a model without a context vector (the errors that need one say it).
HOW_TO_ADD = "the robotics and maintenance models take one: --data.context-dim 4"


class ContextVector(nn.Module):
    """``x [n, d] -> [x, context] [n, d + dim]`` with a zero-initialized ``context [dim]``."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"a context vector needs dim >= 1, got {dim}")
        self.context = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return append_context(x, self.context)


def append_context(x: Tensor, context: Tensor) -> Tensor:
    """``x [..., d]`` with ``context [dim]`` appended to every row."""
    return torch.cat([x, context.expand(*x.shape[:-1], context.shape[-1])], dim=-1)


def context_names(names: Iterable[str]) -> tuple[str, ...]:
    """The parameter names that are context vectors."""
    return tuple(n for n in names if n.rpartition(".")[2] == CONTEXT)
