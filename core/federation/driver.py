"""The federated round loop on a Flower ``Grid``: the same round as ``MetaLearner.run_round``.

Round ``r`` (1-based, in-process round index ``r - 1``):

1. sample training sites with ``core.sampling.sample_clients`` and ``round_generator(seed, r - 1)``
   from the alive training nodes (in the federation's order);
2. send each sampled node the meta-parameters and the round's instructions; collect replies;
3. reject replies that are errors, carry a bad weight, wrong parameter names/shapes/dtypes or non-finite
   values (logged with the reason); a node that does not answer within ``round_timeout`` is marked lost
   (logged: which round lost which node) and no longer sampled;
4. apply the server rule to the accepted updates in sampled order (core aggregation + core optimizer,
   a Flower strategy, or SecAgg+ then the core optimizer; SecAgg+ with ``fed.dp_clip``: the sites clip,
   the server adds DP-FedAvg's noise to the secure sum, ``core.federation.secure_dp``); fewer than
   ``min_fit_clients`` accepted updates skip the round.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from core.federation import records as R
from core.federation.bindings import SiteBindings
from core.federation.messaging import exchange
from core.federation.roster import Roster
from core.federation.secure_dp import check_secure_dp, privacy_mode, release
from core.federation.selection import KeptRounds, RoundSelection
from core.federation.settings import FederatedRun
from core.federation.strategies import Accepted, CoreRule, make_rule

log = logging.getLogger("flwr")  # Flower's handler: shown by `flwr run --stream` and the simulation console

EventSink = Callable[[dict[str, Any]], None]
RoundSink = Callable[[int, dict[str, float]], None]


@dataclass
class RoundReport:
    """What happened in one round (also logged as an event)."""

    round: int
    sampled: list[str]
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    applied: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class DriverResult:
    """The final meta-parameters, per-round reports, evaluation metrics by round, and every event."""

    meta: dict
    rounds: list[RoundReport]
    evaluations: dict[int, dict[str, float]]
    events: list[dict[str, Any]]
    roster: Roster
    kept_rounds: list[int] = field(default_factory=list)
    """The rounds whose mean ``meta`` is (``eval.checkpoint_average``), the best-validated round, or the last."""
    kept_by: str = "last"
    """How ``kept_rounds`` were chosen: ``average`` | ``validation`` | ``last``."""
    mlflow_run_id: Optional[str] = None
    finish: Any = None


class FederationDriver:
    """Runs ``run`` on ``grid``; ``on_round`` receives each round's metrics, ``on_event`` every event;
    ``selection`` validates the meta-parameters every ``fed.val_every`` rounds on the coordinator and keeps the
    best-validated round, as ``fml run`` does (:mod:`core.federation.selection`)."""

    def __init__(self, grid: Any, context: Any, run: FederatedRun,
                 on_round: Optional[RoundSink] = None, on_event: Optional[EventSink] = None,
                 bindings: Optional[SiteBindings] = None, selection: Optional[RoundSelection] = None) -> None:
        if run.flower.secagg and (run.flower.strategy != "core" or run.fed.aggregation != "mean"):
            raise ValueError("flower.secagg needs flower.strategy=core and fed.aggregation=mean "
                             f"(got {run.flower.strategy!r}, {run.fed.aggregation!r}): a secure sum can only average")
        check_secure_dp(run.fed, run.flower)
        self.grid, self.context, self.run = grid, context, run
        self.settings = run.flower
        self._on_round = on_round or (lambda r, m: None)
        self._on_event = on_event
        self.events: list[dict[str, Any]] = []
        self.roster = Roster(silent_retry=max(30.0, 2 * run.flower.round_timeout), bindings=bindings)
        self.rule: Any = None
        self.selection = selection
        self._secret_noise: Any = None  # DP noise of SecAgg+ rounds: secret, drawn on first use

    # ----------------------------------------------------------------------------------------- events
    def event(self, **fields: Any) -> None:
        fields = {"time": round(time.time(), 3), **fields}
        self.events.append(fields)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "time")
        (log.warning if fields.get("kind") in ("node_lost", "update_rejected", "round_skipped") else log.info)(text)
        if self._on_event is not None:
            self._on_event(fields)

    # ----------------------------------------------------------------------------------------- config
    def base_config(self) -> dict[str, Any]:
        run = self.run
        return {R.VERTICAL: run.vertical, R.DATA: R.data_to_config(run.data), R.SEED: int(run.seed),
                R.ALGORITHM: run.algorithm, R.WEIGHTING: run.fed.weighting,
                **R.inner_to_config(run.inner)}

    # ----------------------------------------------------------------------------------------- start
    def start(self) -> dict:
        """Discover nodes (at least ``min_available_clients`` training nodes) and get the seeded init."""
        s = self.settings
        base = self.base_config()
        deadline = time.monotonic() + s.connect_timeout
        init = None
        while True:
            got = self.roster.describe_new(self.grid, base, s.round_timeout, s.poll_interval, want_init=init is None,
                                           on_event=self.event)
            init = init if init is not None else got
            pool = self.roster.pool("train", 0)
            if init is None and self.roster.nodes:
                init = self.roster._init_from_any(self.grid, base, s.round_timeout, s.poll_interval)
            if len(pool) >= s.min_available_clients and init is not None:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(pool)} training node(s) connected ({', '.join(n.site_id for n in pool) or 'none'}); "
                    f"flower.min_available_clients={s.min_available_clients}; waited {s.connect_timeout:.0f}s. "
                    "Start more SuperNodes (each with --node-config \"site-id='...'\") or lower the minimum"
                )
            time.sleep(1.0)
        meta = R.record_to_params(init)
        self.expected = R.shapes_of(meta)
        self.rule = (CoreRule(meta, self.run.fed, self.run.server, self.run.seed) if self.settings.secagg
                     else make_rule(self.run, meta))
        self.event(kind="run_started", nodes=len(self.roster.nodes), train_nodes=len(pool),
                   strategy=self.settings.strategy, secagg=self.settings.secagg,
                   privacy=privacy_mode(self.run.fed, self.settings))
        return meta

    # ----------------------------------------------------------------------------------------- rounds
    def sample(self, server_round: int) -> list:
        """The nodes of this round's sampled sites (``core.sampling`` with the in-process generator)."""
        from core.sampling import sample_clients
        from core.seeds import round_generator

        s, fed = self.settings, self.run.fed
        pool = self.roster.wait_for(self.grid, "train", s.min_available_clients, server_round, s.connect_timeout,
                                    s.round_timeout, s.poll_interval, self.base_config(), self.event)
        pool = self.roster.pool("train", server_round, s.lost_node_retry) or pool
        gen = round_generator(self.run.seed, server_round - 1)
        ids = sample_clients([n.site_id for n in pool], [n.size for n in pool], fed.clients_per_round, gen,
                             fed.sampler, fed.dropout)
        by_site = {n.site_id: n for n in pool}
        return [by_site[sid] for sid in ids]

    def run_round(self, server_round: int) -> RoundReport:
        start = time.perf_counter()
        chosen = self.sample(server_round)
        report = RoundReport(server_round, [n.site_id for n in chosen])
        if self.settings.secagg:
            self._secure_round(server_round, chosen, report)
        else:
            self._plain_round(server_round, chosen, report)
        meta = self.rule.meta()
        if not all(bool(v.isfinite().all()) for v in meta.values()):
            raise FloatingPointError(f"meta-parameters became NaN/inf at round {server_round} ({self.run.algorithm}); "
                                     "lower the server or inner learning rate")
        report.metrics.update({"fed/clients": float(len(report.accepted)), "fed/sampled": float(len(chosen)),
                               "fed/rejected": float(len(report.rejected)), "fed/lost": float(len(report.lost)),
                               "fed/round_ms": 1000.0 * (time.perf_counter() - start)})
        self.event(kind="round_end", round=server_round, accepted=report.accepted, rejected=report.rejected,
                   lost=report.lost, applied=report.applied, round_ms=round(report.metrics["fed/round_ms"], 1))
        self._on_round(server_round, report.metrics)
        return report

    def _train_messages(self, server_round: int, chosen: list) -> list:
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        arrays = R.params_to_record(self.rule.meta())
        config = ConfigRecord({**self.base_config(), R.ROUND: server_round - 1, R.REPLY: self.rule.reply})
        return [Message(RecordDict({R.ARRAYS: arrays, R.CONFIG: config}), message_type=MessageType.TRAIN,
                        dst_node_id=n.node_id, group_id=str(server_round)) for n in chosen]

    def _plain_round(self, server_round: int, chosen: list, report: RoundReport) -> None:
        s = self.settings
        result = exchange(self.grid, self._train_messages(server_round, chosen), s.round_timeout, s.poll_interval)
        errors, gone = result.errors(), result.unavailable()
        accepted: list[Accepted] = []
        for node in chosen:
            if node.node_id in result.unanswered or node.node_id in gone:
                reason = gone.get(node.node_id) or f"no reply within {s.round_timeout:.0f}s"
                report.lost[node.site_id] = reason
                self.roster.mark_lost(node.node_id, server_round, reason, self.event)
                continue
            if node.node_id in errors:
                self._reject(server_round, node, f"node error: {errors[node.node_id]}", report)
                continue
            reply = result.replies[node.node_id]
            if R.ARRAYS not in reply.content.array_records or R.METRICS not in reply.content.metric_records:
                self._reject(server_round, node, "reply lacks the 'arrays' or 'metrics' record", report)
                continue
            metrics = dict(reply.content[R.METRICS])
            reason = R.check_metrics(metrics) or R.check_update(reply.content[R.ARRAYS], self.expected)
            if reason is not None:
                self._reject(server_round, node, reason, report)
                continue
            accepted.append(Accepted(node.node_id, node.site_id, reply.content[R.ARRAYS], metrics, reply))
        report.accepted = [a.site_id for a in accepted]
        if len(accepted) < max(1, self.settings.min_fit_clients):
            self.event(kind="round_skipped", round=server_round,
                       reason=f"{len(accepted)} accepted update(s) < flower.min_fit_clients={self.settings.min_fit_clients}")
            return
        self.rule.apply(server_round, accepted)
        report.applied = True
        report.metrics.update(_mean_metrics([a.metrics for a in accepted]))

    def _secure_round(self, server_round: int, chosen: list, report: RoundReport) -> None:
        from core.federation.secagg import secure_mean

        by_node = {n.node_id: n for n in chosen}
        config = {**self.base_config(), R.ROUND: server_round - 1, R.REPLY: "direction"}
        if self.run.fed.dp_clip > 0:  # DP-FedAvg under SecAgg+: every site clips its own direction
            config[R.DP_CLIP] = float(self.run.fed.dp_clip)
        result = secure_mean(self.grid, self.context, list(by_node), self.rule.meta(), config, self.settings,
                             self.run.fed.weighting, server_round,
                             on_reject=lambda nid, why: self._reject(server_round, by_node[nid], why, report))
        report.accepted = [by_node[n].site_id for n in result.included if n in by_node]
        for node in chosen:
            if node.node_id not in result.included and node.site_id not in report.rejected:
                reason = "dropped out of SecAgg+ (no reply, error or protocol failure)"
                report.lost[node.site_id] = reason
                self.roster.mark_lost(node.node_id, server_round, reason, self.event)
        if result.direction is None or len(report.accepted) < max(1, self.settings.min_fit_clients):
            self.event(kind="round_skipped", round=server_round,
                       reason="SecAgg+ halted (too few nodes for its threshold)" if result.direction is None
                       else f"{len(report.accepted)} update(s) < flower.min_fit_clients")
            return
        if not all(bool(v.isfinite().all()) for v in result.direction.values()):
            self.event(kind="round_skipped", round=server_round, reason="secure aggregate is not finite")
            return
        direction = result.direction
        if self.run.fed.dp_clip > 0:  # ... and the server adds DP-FedAvg's noise to their secure sum
            from core.privacy import secret_generator

            if self._secret_noise is None:
                self._secret_noise = secret_generator()
            try:
                direction = release(direction, len(result.included), self.run.fed, self.settings, self._secret_noise)
            except ValueError as err:
                self.event(kind="round_skipped", round=server_round, reason=str(err))
                return
        self.rule.step(direction)
        report.applied = True
        report.metrics.update(_mean_metrics(list(result.metrics.values())))

    def _reject(self, server_round: int, node: Any, reason: str, report: RoundReport) -> None:
        report.rejected[node.site_id] = reason
        self.event(kind="update_rejected", round=server_round, node=node.node_id, site=node.site_id, reason=reason)

    # ----------------------------------------------------------------------------------------- evaluation
    def evaluate(self, server_round: int) -> dict[str, float]:
        """Few-shot adaptation on every alive node of ``flower.eval_roles``; mean metrics (``val/...``)."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        s = self.settings
        nodes = [n for role in s.roles_to_evaluate() for n in self.roster.pool(role, server_round)]
        if not nodes:
            return {}
        config = ConfigRecord({**self.base_config(), R.EVAL_SHOTS: s.eval_shots, R.EVAL_DRAWS: s.eval_draws,
                               R.EVAL_STEPS: ",".join(str(x) for x in s.steps_to_evaluate()),
                               R.EVAL_LR: float(s.eval_lr or self.run.inner.lr)})
        arrays = R.params_to_record(self.rule.meta())
        messages = [Message(RecordDict({R.ARRAYS: arrays, R.CONFIG: config}), message_type=MessageType.EVALUATE,
                            dst_node_id=n.node_id, group_id=f"eval-{server_round}") for n in nodes]
        result = exchange(self.grid, messages, s.round_timeout, s.poll_interval)
        for node_id, reason in result.errors().items():
            self.event(kind="evaluation_failed", round=server_round, node=node_id, reason=reason)
        rows = [dict(m.content[R.METRICS]) for m in result.ok().values() if R.METRICS in m.content.metric_records]
        metrics = {f"val/{k}": v for k, v in _mean_metrics(rows).items()}
        if metrics:
            metrics["val/nodes"] = float(len(rows))
            self._on_round(server_round, metrics)
        return metrics

    # ----------------------------------------------------------------------------------------- all
    def run_all(self) -> DriverResult:
        self.start()
        rounds, evaluations = [], {}
        keeper = KeptRounds(self.run.average_last, self.selection)
        for r in range(1, int(self.run.fed.rounds) + 1):
            rounds.append(self.run_round(r))
            every = self.settings.eval_every
            if (every and r % every == 0) or r == int(self.run.fed.rounds):
                metrics = self.evaluate(r)
                if metrics:
                    evaluations[r] = metrics
            if r % int(self.run.fed.val_every) == 0:
                self._validate(keeper, r)
                if keeper.should_stop:
                    self.event(kind="early_stopped", round=r, best_round=keeper.best[0] if keeper.best else None,
                               patience=self.selection.patience if self.selection else 0)
                    break
        meta, kept_rounds, kept_by = keeper.kept(len(rounds), self.rule.meta())
        if kept_by == "average":
            self.event(kind="rounds_averaged", rounds=kept_rounds)
        elif kept_by == "validation":
            self.event(kind="round_selected", round=kept_rounds[0], metric=self.selection.metric,
                       value=round(keeper.best[1], 6))
        self.event(kind="run_finished", rounds=len(rounds),
                   lost={self.roster.nodes[n].site_id: r for n, r in self.roster.lost.items() if n in self.roster.nodes})
        return DriverResult(meta, rounds, evaluations, self.events, self.roster, kept_rounds=kept_rounds,
                            kept_by=kept_by)

    def _validate(self, keeper: KeptRounds, server_round: int) -> None:
        """The coordinator's validation of this round (logged ``val/<metric>``, the key ``fml run`` ranks rounds by),
        offered to ``keeper``."""
        metrics = keeper.offer(server_round, self.rule.meta())
        if metrics:
            self._on_round(server_round, {f"val/{k}": float(v) for k, v in metrics.items()})
            self.event(kind="round_validated", round=server_round, metric=self.selection.metric,
                       value=round(float(metrics[self.selection.metric]), 6))


def _mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k in (R.NUM_EXAMPLES, R.WEIGHT) or isinstance(v, (list, str)):
                continue
            out.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in out.items()}
