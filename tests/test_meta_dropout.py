"""Meta-dropout (``inner.meta_dropout``): the support inputs, or the head's input features (``inner.meta_dropout_at``),
of meta-training episodes, never the query, under a mask drawn from (seed, round, site) only; vmap = loop still holds;
evaluation never sees it."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from core.algorithms import InnerConfig
from core.config import FederatedConfig, ServerConfig
from core.learner import MetaLearner
from core.meta_dropout import MetaDropout, drop_support_inputs, meta_dropout_for
from core.types import Episode
from verticals.digits import prepare
from data_adapters.digits import DigitsData


@pytest.fixture(scope="module")
def problem():
    return prepare(DigitsData(train_sites=8, validation_sites=1, test_sites=1), seed=0)


def test_support_inputs_are_dropped_and_scaled_the_query_is_not(problem) -> None:
    plain = MetaDropout().episode(problem, "train-000", {}, seed=3, round_index=5)
    dropped = MetaDropout(0.3).episode(problem, "train-000", {}, seed=3, round_index=5)
    x, xd = plain.support[0], dropped.support[0]
    kept = xd != 0
    assert torch.equal(xd[kept], x[kept] / 0.7)  # bit for bit, as the committed lines were drawn
    zeroed = float(((xd == 0) & (x != 0)).sum()) / float((x != 0).sum())
    assert 0.25 < zeroed < 0.35
    assert torch.equal(dropped.support[1], plain.support[1])
    assert all(torch.equal(a, b) for a, b in zip(dropped.query, plain.query))
    again = MetaDropout(0.3).episode(problem, "train-000", {}, seed=3, round_index=5)
    assert torch.equal(again.support[0], xd)  # a function of (seed, round, site)
    other = MetaDropout(0.3).episode(problem, "train-000", {}, seed=3, round_index=6)
    assert not torch.equal((other.support[0] == 0), (xd == 0))


def test_bad_uses_are_clear_errors() -> None:
    episode = Episode(support=(torch.ones(2, 3), torch.zeros(2)), query=(torch.ones(2, 3), torch.zeros(2)))
    gen = torch.Generator().manual_seed(0)
    assert drop_support_inputs(episode, 0.0, gen) is episode
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        drop_support_inputs(episode, 1.0, gen)
    with pytest.raises(ValueError, match="floating-point"):
        drop_support_inputs(dataclasses.replace(episode, support=(torch.ones(2, 3, dtype=torch.long), torch.zeros(2))),
                            0.2, gen)
    with pytest.raises(ValueError, match="rollout"):
        drop_support_inputs(dataclasses.replace(episode, query_fn=lambda p: episode.query), 0.2, gen)


@pytest.mark.parametrize("at", ["input", "features"])
@pytest.mark.parametrize("algorithm", ["fomaml", "maml", "reptile"])
def test_a_round_with_meta_dropout_is_the_same_vectorized_or_looped(problem, algorithm: str, at: str) -> None:
    def direction(vectorize: bool, dropout: float) -> dict[str, torch.Tensor]:
        learner = MetaLearner(problem, algorithm, InnerConfig(steps=2, lr=0.1, meta_dropout=dropout, meta_dropout_at=at),
                              FederatedConfig(rounds=1, clients_per_round=4, vectorize=vectorize), ServerConfig(),
                              seed=0)
        return learner.client_round(0)[2]

    vec, loop, plain = direction(True, 0.4), direction(False, 0.4), direction(True, 0.0)
    for k in vec:
        torch.testing.assert_close(vec[k], loop[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(vec[k], plain[k]) for k in vec)  # the dropout is really applied


def test_rollout_verticals_and_bad_values_are_refused_before_any_run(fml_home, capsys) -> None:
    from pipelines.cli import main

    assert main(["run", "robotics", "--preset", "quick", "--inner.meta-dropout", "0.2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inner.meta_dropout drops features of row data" in err[0], err
    assert main(["run", "sine", "--preset", "quick", "--inner.meta-dropout", "1.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--inner.meta-dropout 1.5 (must be in [0, 1))" in err[0], err


def test_fml_tune_searches_meta_dropout_when_asked() -> None:
    import optuna

    from pipelines.tune import SearchSpace

    space = SearchSpace((0.01, 0.1), (1, 5), (0.001, 0.01), meta_dropout=(0.0, 0.5))
    space.check()
    trial = optuna.create_study().ask()
    params = space.suggest(trial)
    assert 0 <= params["inner.meta_dropout"] <= 0.5 and space.contains(params)
    assert "inner.meta_dropout" not in SearchSpace((0.01, 0.1), (1, 5), (0.001, 0.01)).suggest(
        optuna.create_study().ask())
    with pytest.raises(ValueError, match="meta_dropout"):
        SearchSpace((0.01, 0.1), (1, 5), (0.001, 0.01), meta_dropout=(0.2, 1.0)).check()


@pytest.mark.parametrize("at", ["input", "features"])
def test_fedavg_trains_on_clean_rows(problem, at: str) -> None:
    def direction(dropout: float) -> dict[str, torch.Tensor]:
        learner = MetaLearner(problem, "fedavg", InnerConfig(steps=2, lr=0.1, meta_dropout=dropout, meta_dropout_at=at),
                              FederatedConfig(rounds=1, clients_per_round=4), ServerConfig(), seed=0)
        return learner.client_round(0)[2]

    clean, dropped = direction(0.0), direction(0.4)
    assert all(torch.equal(clean[k], dropped[k]) for k in clean)


def test_feature_dropout_masks_the_heads_input_on_the_support_only(problem) -> None:
    """``features``: the support's loss is the head's loss on the body's features times the episode's mask (computed
    by hand here), the query's is the clean loss, and the inputs themselves are untouched."""
    from core.algorithms import get_algorithm

    model = problem.make_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    dropout = meta_dropout_for(problem, model, get_algorithm("fomaml"), InnerConfig(meta_dropout=0.5,
                                                                                      meta_dropout_at="features"))
    plain = MetaDropout().episode(problem, "train-000", {}, seed=3, round_index=5)
    masked = dropout.episode(problem, "train-000", {}, seed=3, round_index=5)
    assert torch.equal(masked.support[0], plain.support[0]) and len(masked.support) == len(plain.support) + 1
    mask = masked.support[-1]
    assert mask.shape == (plain.support[0].shape[0], *dropout.feature_shape)
    assert set(mask.unique().tolist()) == {0.0, 2.0}  # inverted dropout at p = 0.5
    assert torch.equal(masked.query[-1], torch.ones_like(masked.query[-1]))

    loss = dropout.loss(problem.loss_fn(model))
    features = {}
    handle = dropout.head.register_forward_pre_hook(lambda m, args: features.setdefault("x", args[0]))
    with torch.no_grad():
        model(plain.support[0])
    handle.remove()
    by_hand = problem.criterion(dropout.head(features["x"] * mask), plain.support[1])
    torch.testing.assert_close(loss(params, masked.support), by_hand)
    torch.testing.assert_close(loss(params, masked.query), problem.loss_fn(model)(params, plain.query))
    assert not torch.allclose(loss(params, masked.support), problem.loss_fn(model)(params, plain.support))
    assert not dropout.head._forward_pre_hooks  # the hook lives for one call only


def test_feature_dropout_is_refused_with_a_clear_error(fml_home, capsys) -> None:
    from core.algorithms import get_algorithm
    from pipelines.cli import main

    assert main(["run", "sine", "--preset", "quick", "--inner.meta-dropout-at", "hidden"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--inner.meta-dropout-at hidden (must be input, features)" in err[0], err
    with pytest.raises(ValueError, match="no parameters"):
        meta_dropout_for(None, torch.nn.ReLU(), get_algorithm("fomaml"),  # type: ignore[arg-type]
                         InnerConfig(meta_dropout=0.2, meta_dropout_at="features"))


@pytest.mark.parametrize("algorithm", ["fomaml", "maml"])
def test_a_traced_round_with_feature_dropout_replays_the_masks_it_is_given(problem, algorithm: str) -> None:
    """The replayed graph (``fed.trace_after``) holds the head's pre-hook as an op whose mask is an input: a later
    round's other masks give the eager round's numbers bit for bit."""
    from core.replay import GraphReplay
    from core.rounds import client_updates

    learner = MetaLearner(problem, algorithm, InnerConfig(steps=2, lr=0.1, meta_dropout=0.4, meta_dropout_at="features"),
                          FederatedConfig(rounds=1, clients_per_round=4), ServerConfig(), seed=0)
    meta = learner.meta_params()

    def episodes(round_index: int):
        return [learner.meta_dropout.episode(problem, sid, meta, 0, round_index) for sid in learner._train_ids[:4]]

    replay = GraphReplay()
    client_updates(learner.algorithm, learner.train_loss_fn, meta, episodes(0), learner.inner, trace_after=1,
                   replay=replay)
    assert replay.traced() == 1
    replayed = client_updates(learner.algorithm, learner.train_loss_fn, meta, episodes(1), learner.inner,
                              trace_after=1, replay=replay)
    eager = client_updates(learner.algorithm, learner.train_loss_fn, meta, episodes(1), learner.inner)
    for k in eager.directions:
        assert torch.equal(replayed.directions[k], eager.directions[k]), k
