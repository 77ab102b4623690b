"""What a federated run trains (``FederatedRun``) and how it runs on Flower (``FlowerSettings``).

Both are plain dataclasses; no torch import here, so the ClientApp module stays light. ``FlowerSettings``
is the ``flower`` section of ``core.config.RunConfig``: presets, ``--set flower.<field>=...`` and the
``flower.<field>`` keys of a Flower run config all reach it through ``core.config.from_flat``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FlowerSettings:
    """How the FML round runs on Flower (the FML math itself is in ``FederatedRun``)."""

    strategy: str = "core"
    """Server rule: ``core`` (core aggregation rule + core server optimizer, identical to the in-process
    engine) or a Flower strategy: fedavg, fedadam, fedyogi, fedadagrad, fedavgm, fedmedian, fedtrimmedavg,
    krum (clients then return ``init - direction`` and Flower's strategy aggregates those weights)."""
    min_available_clients: int = 2
    """Training nodes that must be connected before a round starts (the run waits up to ``connect_timeout``)."""
    min_fit_clients: int = 1
    """Accepted updates needed to apply a round; with fewer the round is skipped (logged), the model unchanged."""
    round_timeout: float = 120.0
    """Seconds to wait for a round's replies; a sampled node that has not answered by then is marked lost."""
    connect_timeout: float = 300.0
    """Seconds to wait for ``min_available_clients`` training nodes before the run fails."""
    poll_interval: float = 0.1
    """Seconds between the ServerApp's polls for replies."""
    lost_node_retry: int = 0
    """Rounds after which a lost node may be sampled again (0 = never in this run)."""
    secagg: bool = False
    """Aggregate with Flower's SecAgg+ (the server sees only the weighted mean); needs strategy ``core``,
    aggregation ``mean`` and the ClientApp's ``secaggplus_mod`` (built in). With ``fed.dp_clip`` the sites
    clip their own updates and the server adds DP-FedAvg's noise to the secure sum (``core.federation.secure_dp``)."""
    secagg_shares: float = 1.0
    """SecAgg+ shares per client as a fraction of the sampled clients (Flower's ``num_shares``)."""
    secagg_threshold: float = 0.67
    """SecAgg+ reconstruction threshold as a fraction of the shares (Flower's ``reconstruction_threshold``)."""
    secagg_clip: float = 8.0
    """SecAgg+ clipping range: each weighted direction entry is clipped to [-clip, clip] before quantization
    (with DP it must be >= ``fed.dp_clip``, so that it never changes a DP-clipped update)."""
    secagg_quantization: int = 2**22
    """SecAgg+ quantization levels over [-clip, clip] (resolution 2*clip/levels)."""
    secagg_max_weight: float = 0.0
    """Largest client weight SecAgg+ expects (0 = 1 for uniform weighting, else 1000)."""
    trimmed_beta: float = 0.2
    """Fraction trimmed at each end by ``fedtrimmedavg``."""
    krum_malicious: int = 0
    """Malicious nodes tolerated by ``krum``."""
    dp_noise: float = 0.0
    """With a Flower strategy: noise multiplier of Flower's server-side fixed-clipping DP wrapper (0 = off)."""
    dp_clip: float = 0.0
    """With a Flower strategy: clipping norm of that DP wrapper (needed when ``dp_noise`` > 0)."""
    eval_every: int = 0
    """Rounds between federated few-shot evaluations on the ``eval_roles`` nodes (0 = only after the last)."""
    eval_roles: str = "validation"
    """Comma-separated roles of the nodes that evaluate (few-shot adaptation on their own site)."""
    eval_shots: int = 5
    """Support size of a node's evaluation draw (per class / rows / units, as the vertical defines)."""
    eval_steps: str = "0,5"
    """Comma-separated adaptation steps scored by evaluating nodes."""
    eval_lr: float = 0.0
    """Adaptation step size at evaluation (0 = the inner lr)."""
    eval_draws: int = 2
    """Support draws per evaluating node."""
    event_log: str = ""
    """Path of a JSON-lines event log (round ends, lost nodes, rejected updates); empty = none."""
    finish: bool = True
    """Run the finish hook (held-out evaluation and registration, as ``fml run``) after the last round."""

    def roles_to_evaluate(self) -> list[str]:
        return [r.strip() for r in self.eval_roles.split(",") if r.strip()]

    def steps_to_evaluate(self) -> list[int]:
        return sorted({int(s) for s in str(self.eval_steps).split(",") if s.strip()})


@dataclass
class FederatedRun:
    """One federated meta-training run: the vertical, the FML math and the Flower settings.

    Args:
        vertical: registered vertical name (every node loads its site through this vertical).
        data: overrides of the vertical's data-config fields, sent to every node (JSON-able).
        seed: seeds initialization, client sampling and every site's episodes.
        algorithm: registered algorithm name (``fomaml``, ``maml``, ``reptile``, ``fedavg`` ...).
        inner: ``core.algorithms.base.InnerConfig``.
        fed: ``core.config.FederatedConfig`` (rounds, clients per round, sampler, weighting, rule).
        server: ``core.config.ServerConfig`` (server optimizer of strategy ``core``).
        flower: :class:`FlowerSettings`.
        experiment: MLflow experiment.
        run_name: MLflow run name.
        extra: the pipeline's resolved config (logged, and handed to the finish hook).
        average_last: keep the mean of the meta-parameters at the last n rounds that end a ``fed.val_every``
            interval instead of the last round (``--eval.checkpoint-average``, as ``fml run``); 0: the last round.
    """

    vertical: str
    data: dict[str, Any]
    seed: int
    algorithm: str
    inner: Any
    fed: Any
    server: Any
    flower: FlowerSettings = field(default_factory=FlowerSettings)
    experiment: str = ""
    run_name: str = ""
    extra: Any = None
    average_last: int = 0
