"""Server rules: how a round's accepted replies become the next meta-parameters.

- ``core``: the in-process engine's rule: ``core.aggregation`` (weights by ``fed.weighting``, rule
  ``fed.aggregation``) on the clients' DIRECTIONS, then the ``core.server`` optimizer step (``server.optimizer``
  at ``server.lr``). Bit-for-bit the computation of ``MetaLearner.run_round``, except DP-FedAvg's noise: the
  deployed server draws it from a secret generator, not from the run's seed that every node knows.
- Flower strategies, where Flower already implements the rule: clients reply ``init - direction`` so the
  strategy sees ordinary model weights. ``fedavg`` (= server SGD at lr 1), ``fedavgm``, ``fedadam``,
  ``fedyogi``, ``fedadagrad`` (FedOpt family, server lr = ``server.lr``), ``fedmedian``, ``fedtrimmedavg``,
  ``krum``; optionally wrapped in Flower's server-side fixed-clipping differential privacy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from core.registry import Registry

WEIGHT_KEY = "weight"


@dataclass
class Accepted:
    """One accepted reply: its node, site, the update record, its metrics and the raw message."""

    node_id: int
    site_id: str
    record: Any
    metrics: dict[str, float]
    message: Any


class CoreRule:
    """Core aggregation + core server optimizer over named meta-parameters (state: the optimizer)."""

    reply = "direction"

    def __init__(self, meta, fed: Any, server: Any, seed: int, noise: Optional["torch.Generator"] = None) -> None:
        import torch
        from torch import nn

        from core.server import make_server_optimizer

        self.fed, self.seed, self.noise = fed, seed, noise
        self.params = {k: nn.Parameter(v.detach().clone()) for k, v in meta.items()}
        self.optimizer: torch.optim.Optimizer = make_server_optimizer(server.optimizer, self.params.values(), server.lr)

    def meta(self):
        return {k: p.detach().clone() for k, p in self.params.items()}

    def aggregate(self, server_round: int, accepted: Sequence[Accepted]):
        """The aggregated direction of ``accepted`` (in the order given: keep the sampled order); with
        ``fed.dp_clip`` the DP-FedAvg mean of ``MetaLearner.run_round`` (same clip; the noise from ``noise``
        when given, else seeded like the in-process run's)."""
        import torch

        from core.aggregation import aggregate_round
        from core.federation.records import NUM_EXAMPLES, record_to_params

        directions = [record_to_params(a.record) for a in accepted]
        stacked = {k: torch.stack([d[k] for d in directions]) for k in directions[0]}
        sizes = [int(a.metrics[NUM_EXAMPLES]) for a in accepted]
        shared = set.intersection(*(set(a.metrics) for a in accepted))
        metrics = {k: torch.tensor([float(a.metrics[k]) for a in accepted]) for k in shared if k.startswith("train/")}
        return aggregate_round(stacked, sizes, self.fed, self.seed, server_round - 1, metrics,  # rounds count from 1
                               noise=self.noise)

    def step(self, direction) -> None:
        """Apply an aggregated direction as the meta-gradient (``set_direction_as_grad`` + optimizer step)."""
        from core.server import set_direction_as_grad

        self.optimizer.zero_grad()
        set_direction_as_grad(self.params, direction)
        self.optimizer.step()

    def apply(self, server_round: int, accepted: Sequence[Accepted]) -> None:
        self.step(self.aggregate(server_round, accepted))


class _FixedNodes:
    """A stand-in Grid listing only the nodes the FML sampler chose (Flower's ``configure_train`` then
    addresses exactly those); nothing is sent through it."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


class FlowerRule:
    """A Flower ``Strategy`` applied to replies the FML driver sampled, received and validated."""

    reply = "weights"

    def __init__(self, meta, strategy: Any) -> None:
        self.strategy = strategy
        self._meta = {k: v.detach().clone() for k, v in meta.items()}

    def meta(self):
        return {k: v.clone() for k, v in self._meta.items()}

    def apply(self, server_round: int, accepted: Sequence[Accepted]) -> None:
        from flwr.app import ConfigRecord

        from core.federation.records import params_to_record, record_to_params

        # configure_train sets the strategy's view of the current model (FedOpt, DP wrappers)
        list(self.strategy.configure_train(server_round, params_to_record(self._meta), ConfigRecord(),
                                           _FixedNodes(a.node_id for a in accepted)))
        arrays, _ = self.strategy.aggregate_train(server_round, [a.message for a in accepted])
        if arrays is None:
            raise RuntimeError(f"Flower strategy {type(self.strategy).__name__} returned no model at round {server_round}")
        new = record_to_params(arrays)
        self._meta = {k: new[k].to(self._meta[k].dtype) for k in self._meta}


StrategyFactory = Callable[[Any, Any], Any]  # (run, n_sampled) -> flwr Strategy
FLOWER_STRATEGIES: Registry[StrategyFactory] = Registry("Flower strategy")


def _common(run: Any) -> dict[str, Any]:
    return {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1, "min_evaluate_nodes": 0,
            "min_available_nodes": 1, "weighted_by_key": WEIGHT_KEY}


def _register_flower_strategies() -> None:
    from flwr.serverapp import strategy as S

    FLOWER_STRATEGIES.register("fedavg", lambda run: S.FedAvg(**_common(run)))
    FLOWER_STRATEGIES.register("fedavgm", lambda run: S.FedAvgM(**_common(run), server_learning_rate=1.0,
                                                                server_momentum=0.9))
    FLOWER_STRATEGIES.register("fedadam", lambda run: S.FedAdam(**_common(run), eta=run.server.lr, eta_l=run.inner.lr))
    FLOWER_STRATEGIES.register("fedyogi", lambda run: S.FedYogi(**_common(run), eta=run.server.lr, eta_l=run.inner.lr))
    FLOWER_STRATEGIES.register("fedadagrad", lambda run: S.FedAdagrad(**_common(run), eta=run.server.lr,
                                                                      eta_l=run.inner.lr))
    FLOWER_STRATEGIES.register("fedmedian", lambda run: S.FedMedian(**_common(run)))
    FLOWER_STRATEGIES.register("fedtrimmedavg", lambda run: S.FedTrimmedAvg(**_common(run),
                                                                            beta=run.flower.trimmed_beta))
    FLOWER_STRATEGIES.register("krum", lambda run: S.Krum(**_common(run),
                                                          num_malicious_nodes=run.flower.krum_malicious))


def make_rule(run: Any, meta) -> CoreRule | FlowerRule:
    """The server rule of ``run.flower.strategy`` (``core`` or a registered Flower strategy)."""
    name = run.flower.strategy
    if name == "core":
        from core.privacy import secret_generator

        # every node knows the run's seed: noise seeded by it could be regenerated and subtracted
        return CoreRule(meta, run.fed, run.server, run.seed, noise=secret_generator())
    if not FLOWER_STRATEGIES.names():
        _register_flower_strategies()
    if name not in FLOWER_STRATEGIES:
        raise ValueError(f"unknown flower.strategy {name!r}; choose core or one of: "
                         + ", ".join(FLOWER_STRATEGIES.names()))
    strategy = FLOWER_STRATEGIES.get(name)(run)
    if run.flower.dp_noise > 0:
        from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

        if run.flower.dp_clip <= 0:
            raise ValueError("flower.dp_noise > 0 needs flower.dp_clip > 0 (the clipping norm of each update)")
        strategy = DifferentialPrivacyServerSideFixedClipping(strategy, run.flower.dp_noise, run.flower.dp_clip,
                                                              num_sampled_clients=run.fed.clients_per_round)
    return FlowerRule(meta, strategy)


def flower_strategy_names() -> list[str]:
    if not FLOWER_STRATEGIES.names():
        _register_flower_strategies()
    return ["core", *FLOWER_STRATEGIES.names()]
