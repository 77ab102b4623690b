"""The federated round loop against the real FML ClientApp through an in-memory Grid: fast checks of the
server logic (no Ray, no processes). Equivalence with the in-process engine, rejected updates, a dead
node, SecAgg+ vs plain, and Flower's FedOpt strategies applied to FML updates."""
from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, Message, RecordDict  # noqa: E402

from core.federation.client import make_client_app  # noqa: E402
from core.federation.driver import FederationDriver  # noqa: E402
from core.learner import MetaLearner  # noqa: E402
from pipelines.federate_node import data_config, load_site, vertical_spec  # noqa: E402
from pipelines.federate_server import resolve_run  # noqa: E402

DATA = {"train_sites": 5, "validation_sites": 1, "test_sites": 1}


class MemoryGrid:
    """A Grid whose nodes are the ClientApp called in-process (one context per node, kept across messages)."""

    def __init__(self, app, sites: list[str], dead: set[str] = frozenset(), silent: set[str] = frozenset()) -> None:
        """``dead`` sites describe themselves, then never answer again; ``silent`` sites never answer."""
        self.app, self.dead, self.silent = app, set(dead), set(silent)
        self.asked: dict[str, int] = {}
        self.nodes = {1000 + i: site for i, site in enumerate(sites)}
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"site-id": s}, state=RecordDict(),
                                    run_config={}) for n, s in self.nodes.items()}
        self.replies: dict[str, Message] = {}
        self._ids = itertools.count()

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg_id = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = msg_id
            msg.metadata.__dict__["_run_id"] = 1
            node = msg.metadata.dst_node_id
            site = self.nodes[node]
            self.asked[site] = self.asked.get(site, 0) + 1
            alive = site not in self.silent and (site not in self.dead or msg.metadata.message_type == "query")
            if alive:  # a node gets its own copy, as after serialization (SecAgg+'s mod mutates its input)
                self.replies[msg_id] = self.app(copy.deepcopy(msg), self.contexts[node])
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


@pytest.fixture(autouse=True)
def server_identity():
    """Flower (>= 1.42) sets the identity of a ServerApp process (run, node, task) before ``main`` runs and
    ``Message(...)`` reads it for the metadata of an instruction; in-process, the test plays that part."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def make_run(**overrides):
    config = {"vertical": "digits", "preset": "quick", "algorithm": "fomaml", "data": DATA, "seed": 5,
              "fed.rounds": 2, "fed.clients_per_round": 3, "flower.finish": False, "flower.eval_roles": ",",
              "flower.round_timeout": 2.0, "flower.poll_interval": 0.01}
    config.update(overrides)
    return resolve_run(config)


def drive(run, grid):
    return FederationDriver(grid, Context(1, 0, {}, RecordDict(), {}), run).run_all()


def sites(n: int = 5) -> list[str]:
    return [f"train-{i:03d}" for i in range(n)]


def in_process(run, rounds: int):
    spec = vertical_spec("digits")
    problem = spec.prepare(data_config(spec, DATA), run.seed)
    learner = MetaLearner(problem, run.algorithm, run.inner, run.fed, run.server, run.seed)
    opt = learner.configure_optimizers()
    learner.optimizers = lambda *a, **k: opt
    for r in range(rounds):
        learner.run_round(r)
    return learner.meta_params()


@pytest.mark.parametrize("overrides", [{}, {"inner.meta_dropout": 0.3, "inner.meta_dropout_at": "features"}],
                         ids=["plain", "meta-dropout-on-features"])
def test_driver_rounds_equal_in_process_rounds(overrides):
    run = make_run(**overrides)
    assert run.inner.meta_dropout == overrides.get("inner.meta_dropout", 0.0)
    result = drive(run, MemoryGrid(make_client_app(load_site), sites()))
    reference = in_process(run, 2)
    for k in reference:
        torch.testing.assert_close(result.meta[k], reference[k], rtol=1e-5, atol=1e-6)


def corrupt(msg, ctx, call_next):
    reply = call_next(msg, ctx)
    site = ctx.node_config["site-id"]
    if msg.metadata.message_type != "train" or site not in ("train-000", "train-001"):
        return reply
    from flwr.app import ArrayRecord

    params = {k: torch.from_numpy(a.numpy().copy()) for k, a in reply.content["arrays"].items()}
    first = next(iter(params))
    params[first] = torch.full_like(params[first], float("inf")) if site == "train-000" else params[first][:1]
    reply.content["arrays"] = ArrayRecord(params)
    return reply


def test_bad_updates_are_rejected_and_a_dead_node_is_lost():
    run = make_run(**{"fed.clients_per_round": 5, "flower.min_available_clients": 3})
    grid = MemoryGrid(make_client_app(load_site, mods=[corrupt]), sites(), dead={"train-004"})
    result = drive(run, grid)
    first = result.rounds[0]
    assert "non-finite" in first.rejected["train-000"]
    assert "shape [1, 64]" in first.rejected["train-001"]
    assert "no reply" in first.lost["train-004"]
    assert sorted(first.accepted) == ["train-002", "train-003"] and first.applied
    assert result.rounds[1].lost == {}  # the lost node is no longer sampled
    assert sorted(result.rounds[1].sampled) == sites(4)
    lost = [e for e in result.events if e["kind"] == "node_lost"]
    assert [(e["round"], e["site"]) for e in lost] == [(1, "train-004")]
    assert all(torch.isfinite(v).all() for v in result.meta.values())


def test_a_node_silent_from_the_start_is_not_waited_for_every_round():
    run = make_run(**{"fed.rounds": 3, "fed.clients_per_round": 2, "flower.round_timeout": 0.5})
    grid = MemoryGrid(make_client_app(load_site), sites(3), silent={"train-002"})
    result = drive(run, grid)
    assert all(r.applied and len(r.accepted) == 2 for r in result.rounds)
    assert grid.asked["train-002"] == 1  # asked to describe itself once, then left alone (retry after 30 s)
    assert [e["kind"] for e in result.events].count("node_silent") == 1


def test_too_few_accepted_updates_skip_the_round():
    run = make_run(**{"fed.rounds": 1, "fed.clients_per_round": 2, "flower.min_fit_clients": 2})
    grid = MemoryGrid(make_client_app(load_site, mods=[corrupt]), ["train-000", "train-002"])
    result = drive(run, grid)
    assert not result.rounds[0].applied
    assert any(e["kind"] == "round_skipped" for e in result.events)


def test_secagg_plus_in_memory_equals_plain():
    common = {"fed.rounds": 1, "fed.clients_per_round": 4, "server.optimizer": "sgd", "server.lr": 1.0}
    plain = drive(make_run(**common), MemoryGrid(make_client_app(load_site), sites(4)))
    secure = drive(make_run(**common, **{"flower.secagg": True}), MemoryGrid(make_client_app(load_site), sites(4)))
    assert sorted(secure.rounds[0].accepted) == sites(4)
    for k in plain.meta:
        torch.testing.assert_close(secure.meta[k], plain.meta[k], rtol=0, atol=2e-5)


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi", "fedmedian", "fedtrimmedavg"])
def test_flower_strategies_apply_to_fml_updates(strategy):
    run = make_run(**{"fed.rounds": 2, "fed.clients_per_round": 4, "flower.strategy": strategy, "server.lr": 0.01})
    result = drive(run, MemoryGrid(make_client_app(load_site), sites(4)))
    start = in_process(dataclasses.replace(run), 0)
    assert all(r.applied for r in result.rounds)
    assert any(float((result.meta[k] - start[k]).abs().max()) > 1e-4 for k in start)
    assert all(torch.isfinite(v).all() for v in result.meta.values())


@pytest.mark.parametrize("patience", [0, 2])
def test_the_driver_keeps_the_best_validated_round_as_fml_run_does(tmp_path, patience):
    """With the validation sites on the coordinator (``flower.finish``), the ServerApp validates every
    ``fed.val_every`` rounds with fml run's validation, keeps the round fml run's ModelCheckpoint keeps and
    stops where its EarlyStopping stops (``fed.early_stopping_patience``)."""
    from core.learner import fit_meta_learner
    from pipelines.federate_server import round_selection
    from pipelines.run import checkpoint_monitor, round_validation

    run = make_run(**{"fed.rounds": 8, "fed.val_every": 1, "flower.finish": True, "server.lr": 0.1,
                      "eval.checkpoint_draws": 1, "fed.early_stopping_patience": patience})  # a server step this large makes validation accuracy go down again
    selection = round_selection(run)
    assert selection is not None and (selection.metric, selection.higher_is_better) == ("accuracy", True)
    result = FederationDriver(MemoryGrid(make_client_app(load_site), sites()), Context(1, 0, {}, RecordDict(), {}),
                              run, selection=selection).run_all()

    spec = vertical_spec("digits")
    problem = spec.prepare(data_config(spec, DATA), run.seed)
    learner = MetaLearner(problem, run.algorithm, run.inner, run.fed, run.server, run.seed,
                          round_validation(problem, run.extra, run.inner))
    trainer = fit_meta_learner(learner, checkpoint_dir=str(tmp_path), monitor=checkpoint_monitor(problem, run.extra),
                               mode="max", progress=False)
    assert (result.kept_rounds, result.kept_by) == (learner.kept_rounds, learner.kept_by)
    assert len(result.rounds) == trainer.global_step == (4 if patience else 8)
    assert result.kept_rounds != [8], "the scores chosen here rank an earlier round best: the check must bite"
    for k, v in learner.meta_params().items():
        torch.testing.assert_close(result.meta[k], v, rtol=1e-5, atol=1e-6)
    validated = [e for e in result.events if e["kind"] == "round_validated"]
    assert [e["round"] for e in validated] == list(range(1, len(result.rounds) + 1))
    assert [e["round"] for e in result.events if e["kind"] == "early_stopped"] == ([4] if patience else [])
    assert [(e["round"], e["metric"]) for e in result.events if e["kind"] == "round_selected"] == \
        [(result.kept_rounds[0], "accuracy")]


def test_the_coordinator_builds_the_run_problem_once(monkeypatch):
    """Round selection (before round 1) and the finish hook read the same sites: the coordinator builds them
    once per run, and again for another run's data."""
    import pipelines.federate_server as server

    builds = []

    class CountingSpec:
        def __init__(self, spec):
            self.spec = spec

        def __getattr__(self, name):
            return getattr(self.spec, name)

        def build(self, data, seed):
            builds.append(seed)
            return self.spec.build(data, seed)

    monkeypatch.setattr(server, "vertical_spec", lambda name: CountingSpec(vertical_spec(name)))
    monkeypatch.setattr(server, "_COORDINATOR_PROBLEM", {})
    run = make_run(**{"flower.finish": True})
    assert server.simulation_nodes(run) == 6  # 5 training + 1 validation sites
    assert server.round_selection(run) is not None
    problem = server.coordinator_problem(run)
    assert server.coordinator_problem(make_run(**{"flower.finish": True})) is problem
    assert builds == [run.seed]
    other = make_run(**{"flower.finish": True, "seed": 6})
    assert server.coordinator_problem(other) is not problem and builds == [run.seed, 6]
    assert len(server._COORDINATOR_PROBLEM) == 1, "one run per ServerApp process: only the last problem is held"
