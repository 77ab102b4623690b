"""The traced replay of a vectorized round (core/replay.py) gives bitwise the eager round's numbers (issue 16)."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from core.algorithms import ALGORITHMS, InnerConfig, get_algorithm
from core.config import FederatedConfig
from core.problem import supervised_loss
from core.replay import GraphReplay
from core.rounds import client_updates
from test_core_rounds import make_episodes, make_model, meta_for, model_for


def assert_identical(a, b) -> None:
    assert a.directions.keys() == b.directions.keys() and a.metrics.keys() == b.metrics.keys()
    for k in a.directions:
        assert torch.equal(a.directions[k], b.directions[k]), k
    for k in a.metrics:
        assert torch.equal(a.metrics[k], b.metrics[k]), k


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_a_replayed_round_is_bitwise_the_eager_round_for_every_algorithm(name: str) -> None:
    model, cfg = model_for(name, InnerConfig(steps=2, lr=0.1, weight_decay=1e-3, proximal=0.1))
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    alg = get_algorithm(name)
    meta = meta_for(name, model, cfg)
    replay = GraphReplay()
    traced = client_updates(alg, loss_fn, meta, make_episodes(4), cfg, trace_after=1, replay=replay)
    assert replay.traced() == 1
    assert_identical(traced, client_updates(alg, loss_fn, meta, make_episodes(4), cfg))
    # the graph takes the meta-parameters and episodes as inputs: other values give the eager numbers again
    moved = {k: v + 0.05 * torch.randn_like(v) for k, v in meta.items()}
    eager = client_updates(alg, loss_fn, moved, make_episodes(4, seed=5), cfg)
    assert_identical(client_updates(alg, loss_fn, moved, make_episodes(4, seed=5), cfg, trace_after=1, replay=replay),
                     eager)
    assert replay.traced() == 1  # same signature, same graph


def test_tracing_waits_for_the_signature_to_recur_and_keys_on_shapes() -> None:
    calls = []

    def fn(params: dict, x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)  # runs eagerly, and once more while tracing; never during a replay
        return params["w"] * x + 1

    replay = GraphReplay()
    w = {"w": torch.tensor(2.0)}
    for i in range(2):
        assert torch.equal(replay("k", fn, w, torch.ones(3), trace_after=3), torch.full((3,), 3.0))
    assert replay.traced() == 0 and len(calls) == 2
    assert torch.equal(replay("k", fn, w, torch.ones(3), trace_after=3), torch.full((3,), 3.0))  # traced now
    assert replay.traced() == 1 and len(calls) == 3
    assert torch.equal(replay("k", fn, {"w": torch.tensor(5.0)}, torch.ones(3), trace_after=3), torch.full((3,), 6.0))
    assert len(calls) == 3  # replayed, with the new weight as an input
    replay("k", fn, w, torch.ones(4), trace_after=3)  # another shape is another signature: eager again
    replay("other key", fn, w, torch.ones(3), trace_after=3)
    replay("k", fn, w, torch.ones(3), trace_after=0)
    assert len(calls) == 6 and replay.traced() == 1


def test_a_function_that_cannot_be_traced_warns_once_and_stays_eager() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return x * 2 if float(x.sum()) > 0 else x  # data-dependent Python control flow

    replay = GraphReplay()
    with pytest.warns(RuntimeWarning, match="cannot be traced"):
        assert torch.equal(replay("k", fn, torch.ones(2), trace_after=1), torch.full((2,), 2.0))
    assert torch.equal(replay("k", fn, -torch.ones(2), trace_after=1), -torch.ones(2))
    assert replay.traced() == 0


def test_the_replays_go_with_their_owner_and_keep_loss_functions_apart() -> None:
    model = make_model()
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    cfg = InnerConfig(steps=1, lr=0.1)
    alg, meta = get_algorithm("fomaml"), meta_for("fomaml", model, cfg)
    replay = GraphReplay()
    client_updates(alg, loss_fn, meta, make_episodes(3), cfg, trace_after=1, replay=replay)
    other = supervised_loss(model, lambda logits, y: 2 * nn.functional.cross_entropy(logits, y))
    doubled = client_updates(alg, other, meta, make_episodes(3), cfg, trace_after=1, replay=replay)
    assert replay.traced() == 2  # another loss is another graph, never the first one's
    assert_identical(doubled, client_updates(alg, other, meta, make_episodes(3), cfg))
    # nothing outside the owner holds the graphs (no module-level cache): dropping it frees them
    graphs, losses = weakref.ref(replay), weakref.ref(loss_fn)
    del replay, loss_fn
    gc.collect()
    assert graphs() is None and losses() is None
    client_updates(alg, other, meta, make_episodes(3), cfg, trace_after=1)  # no replay: eager, nothing kept


def test_trace_after_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="trace_after"):
        FederatedConfig(trace_after=-1)


def test_deduplication_merges_repeats_but_not_random_draws_nor_mutating_graphs() -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    from core.replay import deduplicated

    def repeats(x: torch.Tensor) -> torch.Tensor:
        return (x * 2).exp() + (x * 2).exp() + torch.rand(2) - torch.rand(2)

    graph = make_fx(repeats)(torch.ones(2))
    merged = deduplicated(graph)
    ops = [str(n.target) for n in merged.graph.nodes if n.op == "call_function"]
    assert ops.count("aten.mul.Tensor") == 1 and ops.count("aten.exp.default") == 1
    assert ops.count("aten.rand.default") == 2  # two draws stay two draws
    torch.manual_seed(0)
    want = graph(torch.ones(2))
    torch.manual_seed(0)
    assert torch.equal(merged(torch.ones(2)), want)

    def mutates(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        x.add_(1)
        return y + x * 2

    graph = make_fx(mutates)(torch.ones(2))
    assert deduplicated(graph) is graph


def test_a_meta_training_run_with_replayed_rounds_equals_one_without() -> None:
    from core.config import ServerConfig
    from core.learner import MetaLearner, fit_meta_learner
    from data_adapters.sine import SineData
    from verticals.sine import prepare

    problem = prepare(SineData(train_sites=8, validation_sites=0, test_sites=2, points_per_site=40), seed=0)

    def trained(trace_after: int) -> dict[str, torch.Tensor]:
        fed = FederatedConfig(rounds=5, clients_per_round=4, val_every=5, trace_after=trace_after)
        learner = MetaLearner(problem, "maml", InnerConfig(steps=2, lr=0.01), fed, ServerConfig("adam", 1e-2), seed=3)
        fit_meta_learner(learner, progress=False)
        assert learner.replay.traced() == (1 if trace_after else 0)
        return learner.meta_params()

    eager, replayed = trained(0), trained(2)  # rounds 2-5 replay a graph
    assert all(torch.equal(eager[k], replayed[k]) for k in eager)
