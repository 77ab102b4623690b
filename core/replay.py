"""Replaying a pure tensor function as the graph of ATen operations it ran, traced once per input signature.

Under ``vmap`` and ``torch.func.grad`` every operation of a round passes through the transforms' interpreters,
and every ``functional_call`` through ``nn.Module`` dispatch and parameter swapping. On a small model that
bookkeeping costs as much as the arithmetic: R1's vectorized FO-MAML round (MLP 64-128-128-5, 10 clients)
runs about 1,500 ATen calls for 0.28 GFLOP. ``make_fx`` records the operations the transforms finally
dispatch, once; replaying that graph runs the same kernels on the same inputs in the same order, so the
results are bitwise those of the eager call (``tests/test_core_replay.py``), without the interpreters.

A graph stands for its function only while everything the function reads besides its tensor arguments is
unchanged: the caller's ``key`` names that (e.g. the algorithm, the inner-loop settings, the loss function);
the signature of the arguments (pytree layout, shapes, dtypes, devices) is added here. State read through a
closure (a module's buffers, its train/eval flags) is fixed at tracing time.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch
from torch.fx import GraphModule
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.dialect.common.cse_pass import CSEPass, get_CSE_banned_ops
from torch.utils._pytree import tree_flatten

_UNTRACEABLE = object()


def signature(args: tuple) -> Hashable:
    """What a traced graph is specialized to: the pytree layout of ``args`` and each tensor's metadata."""
    leaves, spec = tree_flatten(args)
    meta = tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) if isinstance(t, torch.Tensor) else t
                 for t in leaves)
    return spec, meta


def deduplicated(graph: GraphModule) -> GraphModule:
    """``graph`` with repeated computations merged (common-subexpression elimination), random operations
    excepted. Merging only ever drops a recomputation of a value from the same inputs, so the results are
    unchanged; a graph that mutates a tensor in place (where that would not hold) is returned as it is.

    R1: the support loss the metrics report is the inner loop's first forward pass again (FO-MAML, 10
    clients: 642 -> 575 operations, about 10% of the replay)."""
    if any(n.op == "call_function" and getattr(getattr(n.target, "_schema", None), "is_mutable", False)
           for n in graph.graph.nodes):
        return graph
    merged = CSEPass(banned_ops=get_CSE_banned_ops())(graph).graph_module
    merged.graph._codegen = graph.graph._codegen  # keep the pytree calling convention of make_fx
    merged.recompile()
    return merged


class GraphReplay:
    """Calls ``fn(*args)`` eagerly until a (key, signature) has been met ``trace_after`` times, then traces it
    with ``make_fx`` and replays the graph from then on.

    Tracing costs a few hundred eager calls' worth (R1: about 0.5-1.5 s), so it pays only for a computation
    that repeats: a signature met fewer times (short runs, a round in which some clients dropped out) never
    pays for it. A function that cannot be traced (data-dependent Python control flow, ``.item()``) warns once
    and stays eager.

    Args:
        max_graphs: graphs kept, least recently used dropped first.
    """

    def __init__(self, max_graphs: int = 16) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self._calls: dict[Hashable, int] = {}

    def __call__(self, key: Hashable, fn: Callable[..., Any], *args: Any, trace_after: int = 1) -> Any:
        """``fn(*args)``, from a traced graph once ``(key, signature(args))`` has been met ``trace_after`` times
        (0 = never trace)."""
        if trace_after < 1:
            return fn(*args)
        full = (key, signature(args))
        graph = self._graphs.get(full)
        if graph is None:
            self._calls[full] = calls = self._calls.get(full, 0) + 1
            if calls < trace_after:
                return fn(*args)
            del self._calls[full]
            graph = self._graphs[full] = self._trace(fn, args)
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(full)
        return fn(*args) if graph is _UNTRACEABLE else graph(*args)

    def traced(self) -> int:
        """How many graphs are held (untraceable signatures not counted)."""
        return sum(g is not _UNTRACEABLE for g in self._graphs.values())

    @staticmethod
    def _trace(fn: Callable[..., Any], args: tuple) -> Any:
        # Fake tensors first (shapes only, no arithmetic while tracing); real ones where a transform has no
        # fake-tensor rule (forward-mode ``jvp``), with the random streams restored afterwards so the replay
        # draws what the eager call would have. Tensors read through a closure (module buffers) are real either
        # way and become constants of the graph.
        cuda = sorted({t.device.index or 0 for t in tree_flatten(args)[0]
                       if isinstance(t, torch.Tensor) and t.device.type == "cuda"})
        errors = []
        for mode in ("fake", "real"):
            try:
                with torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch's own decompositions use torch.jit
                    return deduplicated(make_fx(fn, tracing_mode=mode, _allow_non_fake_inputs=True)(*args))
            except Exception as err:  # noqa: BLE001 - a failed trace leaves the eager call, which is correct
                errors.append(f"{mode}: {type(err).__name__}: {str(err)[:200]}")
        warnings.warn(f"{getattr(fn, '__qualname__', fn)} cannot be traced ({'; '.join(errors)}); it keeps "
                      "running eagerly", RuntimeWarning, stacklevel=3)
        return _UNTRACEABLE
