"""Gradients of functions of a parameter dict: ``torch.func`` inside transforms, eager autograd outside.

``torch.func.grad`` costs about 2x eager ``torch.autograd.grad`` per call on small models (R1 MLP,
25 rows: 0.60 vs 0.27 ms), which dominates the per-client loop of a round and onboarding. These
wrappers keep ``torch.func``'s semantics (gradient w.r.t. the first argument, a dict; composable with
``vmap``/``grad``/``jvp``) and take the eager path when no functorch transform is active. When the
inputs already require grad (an eager outer differentiation, e.g. second-order MAML in the loop), the
eager path builds the graph so the caller can differentiate through the gradient.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from core.types import Params

_peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)


def transform_active() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jvp`` ...) is running.

    Without the private probe this answers True, so callers fall back to ``torch.func`` (correct, slower)."""
    return _peek is None or _peek() is not None


def grad_and_value(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., tuple[Params, Any]]:
    """Like ``torch.func.grad_and_value(fn, has_aux)``: returns ``(grads, value)`` or
    ``(grads, (value, aux))``, differentiating ``fn`` w.r.t. its first argument (a dict of tensors)."""
    transformed = torch.func.grad_and_value(fn, has_aux=has_aux)

    def run(params: Params, *args: Any) -> tuple[Params, Any]:
        if transform_active():
            return transformed(params, *args)
        outer = torch.is_grad_enabled() and any(v.requires_grad for v in params.values())
        inputs = {k: v if (outer and v.requires_grad) else v.detach().requires_grad_() for k, v in params.items()}
        with torch.enable_grad():
            out = fn(inputs, *args)
            value, aux = out if has_aux else (out, None)
            grads = torch.autograd.grad(value, list(inputs.values()), create_graph=outer, allow_unused=True,
                                        materialize_grads=True)
        if not outer:
            value = value.detach()
        grad_dict = dict(zip(inputs, grads))
        return grad_dict, ((value, aux) if has_aux else value)

    return run


def grad(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """Like ``torch.func.grad(fn, has_aux)``: returns ``grads`` or ``(grads, aux)``."""
    both = grad_and_value(fn, has_aux=has_aux)

    def run(params: Params, *args: Any) -> Any:
        grads, value = both(params, *args)
        return (grads, value[1]) if has_aux else grads

    return run


__all__ = ["grad", "grad_and_value"]
