"""One round's weighted mean of client directions through Flower's SecAgg+ protocol.

Flower ships SecAgg+ as a workflow (``flwr.server.workflow.SecAggPlusWorkflow``) driven by a legacy
strategy's ``configure_fit`` / ``aggregate_fit``. The small shim below plays that strategy for exactly
the nodes the FML sampler chose and captures the unmasked aggregate; the server never sees an individual
direction. Each client's weighted direction is clipped to ``[-clip, clip]`` and quantized to
``quantization`` levels before masking, so the aggregate equals the plain weighted mean up to
``2 * clip / quantization`` per entry.

Faults: a node that drops out is recovered by the protocol (its masks are reconstructed from the other
nodes' shares, its update is left out); a masked vector of the wrong shape is dropped before summation
(then handled like a dropout). NaN cannot be seen through the masks, so the ClientApp refuses to send a
non-finite update and the server rejects a non-finite aggregate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from core.federation import records as R
from core.federation.messaging import PollingGrid


@dataclass
class SecureResult:
    """The unmasked weighted mean (``None`` if the protocol halted), the nodes whose updates are in it,
    their scalar metrics, and the reasons of the nodes left out."""

    direction: Optional[dict]
    included: list[int] = field(default_factory=list)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)


class _Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.cid = str(node_id)


class _Shim:
    """The legacy-strategy side of the workflow: sends every chosen node the same ``FitIns``."""

    def __init__(self, node_ids: Sequence[int], config: dict[str, Any]) -> None:
        self.node_ids, self.config = list(node_ids), config
        self.results: list = []
        self.failures: list = []

    def configure_fit(self, server_round, parameters, client_manager):
        from flwr.common import FitIns

        return [(_Proxy(n), FitIns(parameters, dict(self.config))) for n in self.node_ids]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        return (results[0][1].parameters if results else None), {}

    def evaluate(self, server_round, parameters):  # unused by the fit workflow
        return None


def secure_mean(grid: Any, context: Any, node_ids: Sequence[int], meta: dict, config: dict[str, Any],
                flower: Any, weighting: str, server_round: int,
                on_reject: Callable[[int, str], None]) -> SecureResult:
    """Run SecAgg+ over ``node_ids`` for one round; returns the unmasked weighted mean direction."""
    import numpy as np
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
    from flwr.server import ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow

    names = list(meta)
    expected = [(1,)] + [tuple(meta[k].shape) for k in names]
    max_weight = flower.secagg_max_weight or (1.0 if weighting == "uniform" else 1000.0)
    shim = _Shim(node_ids, {**config, R.PARAM_NAMES: json.dumps(names)})

    def keep(reply) -> bool:
        if reply.has_error() or "secaggplus_configs" not in reply.content.config_records:
            return True
        masked = reply.content.config_records["secaggplus_configs"].get("masked_params")
        if masked is None:
            return True
        shapes = [tuple(bytes_to_ndarray(b).shape) for b in masked]
        if shapes != expected:
            on_reject(reply.metadata.src_node_id, f"masked update has shapes {shapes[1:]}, expected {expected[1:]}")
            return False
        return True

    legacy = LegacyContext(context, config=ServerConfig(num_rounds=1), strategy=shim)  # type: ignore[arg-type]
    legacy.state.config_records["config"] = ConfigRecord({"current_round": server_round})
    legacy.state.array_records["parameters"] = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in meta.items()})
    workflow = SecAggPlusWorkflow(num_shares=float(flower.secagg_shares),
                                  reconstruction_threshold=float(flower.secagg_threshold),
                                  max_weight=float(max_weight), clipping_range=float(flower.secagg_clip),
                                  quantization_range=int(flower.secagg_quantization), timeout=flower.round_timeout)
    workflow(PollingGrid(grid, flower.poll_interval, flower.round_timeout, keep), legacy)
    result = SecureResult(direction=None)
    if not shim.results:
        return result
    arrays = parameters_to_ndarrays(shim.results[0][1].parameters)
    result.direction = {k: torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(meta[k].shape).copy()).to(meta[k].dtype)
                        for k, a in zip(names, arrays)}
    for proxy, res in shim.results:
        result.included.append(proxy.node_id)
        result.metrics[proxy.node_id] = {k: float(v) for k, v in res.metrics.items() if isinstance(v, (int, float))}
    return result
