"""Context vectors (CAVIA): the `context` recipe adapts the context only, `cavia` meta-trains the weights
that read it, and the robot policy's fast rollout path reads it like the module does."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from core.algorithms import InnerConfig, get_algorithm
from core.context import ContextVector, context_names
from core.problem import supervised_loss
from core.recipes import recipe_trajectory
from test_core_rounds import make_episodes, make_model


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_a_context_vector_starts_at_zero_and_is_appended_to_every_row() -> None:
    x = torch.randn(5, 3)
    out = ContextVector(2)(x)
    assert out.shape == (5, 5) and torch.equal(out[:, :3], x) and torch.equal(out[:, 3:], torch.zeros(5, 2))
    assert context_names(["0.context", "net.0.weight", "contextual.weight"]) == ("0.context",)
    with pytest.raises(ValueError, match="dim >= 1"):
        ContextVector(0)


def test_the_context_recipe_adapts_the_context_only() -> None:
    model = make_model(context_dim=2)
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    params = _params(model)
    support = make_episodes(1)[0].support
    adapted = recipe_trajectory("context", loss_fn, params, support, [3], 0.5)[3]
    assert not torch.equal(adapted["0.context"], params["0.context"])  # it moved ...
    for k in params:
        if k != "0.context":
            assert torch.equal(adapted[k], params[k]), k  # ... and nothing else did
    assert float(loss_fn(adapted, support)) < float(loss_fn(params, support))
    with pytest.raises(ValueError, match="has none"):
        plain = make_model()
        recipe_trajectory("context", supervised_loss(plain, nn.functional.cross_entropy), _params(plain), support, [1], 0.5)


def test_cavia_learns_the_weights_not_the_contexts_start() -> None:
    """Direction: zero on the context; on the weights, MAML's second-order meta-gradient with the inner loop on
    the context (a first-order one would hardly train the weights that read the context)."""
    model = make_model(context_dim=2)
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    meta = _params(model)
    episode = make_episodes(1)[0]
    cfg = InnerConfig(steps=2, lr=0.5, trainable=("0.context",))
    direction, metrics = get_algorithm("cavia").client_update(loss_fn, meta, episode, cfg)
    assert torch.equal(direction["0.context"], torch.zeros(2))
    maml, _ = get_algorithm("maml").client_update(loss_fn, meta, episode, cfg)
    fomaml, _ = get_algorithm("fomaml").client_update(loss_fn, meta, episode, cfg)
    for k in meta:
        if k != "0.context":
            torch.testing.assert_close(direction[k], maml[k], rtol=1e-6, atol=1e-7)
    # the weights reading the context get the second-order term: not what FO-MAML gives them
    assert not torch.allclose(direction["1.weight"][:, 8:], fomaml["1.weight"][:, 8:], atol=1e-6)
    with pytest.raises(ValueError, match="context vector"):
        get_algorithm("cavia").client_update(loss_fn, meta, episode, replace(cfg, trainable=()))


def test_a_rollout_query_is_collected_by_the_adapted_context() -> None:
    model = make_model(context_dim=2)
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    meta = _params(model)
    episode = make_episodes(1)[0]
    seen = []

    def query_fn(adapted):
        seen.append({k: v.clone() for k, v in adapted.items()})
        return episode.query

    cfg = InnerConfig(steps=2, lr=0.5, trainable=("0.context",))
    rollout = replace(episode, query_fn=query_fn)
    direction, _ = get_algorithm("cavia").client_update(loss_fn, meta, rollout, cfg)
    assert len(seen) == 1 and not torch.equal(seen[0]["0.context"], meta["0.context"])
    assert all(torch.equal(seen[0][k], meta[k]) for k in meta if k != "0.context")
    fixed, _ = get_algorithm("cavia").client_update(loss_fn, meta, episode, cfg)
    for k in meta:  # the same query batch: the same direction
        torch.testing.assert_close(direction[k], fixed[k])


def test_the_learner_gives_cavia_the_context_group_whatever_inner_group_says() -> None:
    from core.config import FederatedConfig, ServerConfig
    from core.learner import MetaLearner
    from verticals.robotics import prepare
    from verticals.robotics.config import RoboticsData

    problem = prepare(RoboticsData(train_robots=4, validation_robots=1, test_robots=1, extrapolation_robots=1,
                                   horizon=10, train_rollouts=2, eval_rollouts=2, context_dim=3), seed=0)
    assert problem.param_groups(problem.make_model())["context"] == ("context.context",)
    learner = MetaLearner(problem, "cavia", InnerConfig(steps=1, lr=1.0, group="all"),
                          FederatedConfig(rounds=1, clients_per_round=2), ServerConfig(), seed=0)
    assert learner.inner.group == "context" and learner.inner.trainable == ("context.context",)
    optimizer = learner.configure_optimizers()
    learner.optimizers = lambda *a, **k: optimizer  # run_round outside a Trainer
    before = {k: v.clone() for k, v in learner.meta_params().items()}
    learner.run_round(0)
    after = learner.meta_params()
    assert torch.equal(after["context.context"], torch.zeros(3))
    assert not torch.equal(after["net.0.weight"], before["net.0.weight"])


def test_the_policys_fast_rollout_path_reads_the_context() -> None:
    from torch.func import functional_call

    from verticals.robotics.policy import GaussianMLPPolicy, mean_fn

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(4, 2, (8, 8), context_dim=3)
    params = {k: v.detach() + (0.3 if k == "context.context" else 0.0) for k, v in policy.named_parameters()}
    obs = torch.randn(6, 4)
    torch.testing.assert_close(mean_fn(policy, params)(obs), functional_call(policy, params, (obs,)), rtol=0, atol=1e-6)
    moved = {**params, "context.context": params["context.context"] + 1.0}
    assert not torch.allclose(mean_fn(policy, moved)(obs), mean_fn(policy, params)(obs))


@pytest.mark.parametrize("kind", ["cnn", "dcnn", "gru"])
def test_maintenance_models_read_the_context_and_cavia_rounds_vectorize(kind: str) -> None:
    """The RUL models append the context to every time step; CAVIA's vmapped round equals its loop there."""
    from core.rounds import client_updates
    from core.types import Episode
    from verticals.maintenance.model import build_model

    torch.manual_seed(0)
    model = build_model({"kind": kind, "sensors": 3, "window": 6, "hidden": 8, "rul_cap": 125.0, "context_dim": 2})
    params = _params(model)
    x = torch.randn(4, 6, 3)
    from torch.func import functional_call

    moved = {**params, "context.context": torch.tensor([1.0, -1.0])}
    assert functional_call(model, params, (x,)).shape == (4,)
    assert not torch.allclose(functional_call(model, moved, (x,)), functional_call(model, params, (x,)))
    loss_fn = supervised_loss(model, nn.functional.mse_loss)
    g = torch.Generator().manual_seed(1)
    episodes = [Episode(support=(torch.randn(5, 6, 3, generator=g), 100 * torch.rand(5, generator=g)),
                        query=(torch.randn(5, 6, 3, generator=g), 100 * torch.rand(5, generator=g)), site_id=f"op-{i}")
                for i in range(3)]
    cfg = InnerConfig(steps=2, lr=0.01, trainable=("context.context",))
    alg = get_algorithm("cavia")
    vec = client_updates(alg, loss_fn, params, episodes, cfg, vectorize=True)
    loop = client_updates(alg, loss_fn, params, episodes, cfg, vectorize=False)
    assert vec.vectorized
    for k in params:
        torch.testing.assert_close(vec.directions[k], loop.directions[k], rtol=1e-4, atol=1e-5)
    assert torch.equal(vec.directions["context.context"], torch.zeros(3, 2))


def test_cavia_or_the_context_recipe_without_a_context_is_refused_before_any_training(fml_home, capsys) -> None:
    from pipelines.cli import main

    for extra, says in ((["--algorithms", "cavia"], "'context' parameter group"),
                        (["--eval.recipes", "context"], "recipe 'context' adapts a context vector and this model has none")):
        assert main(["run", "sine", "--preset", "quick", *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and "--data.context-dim" in err[0], err
    assert not (fml_home / "mlflow.db").exists()  # refused before the tracking store exists


def test_a_negative_context_size_is_refused() -> None:
    from verticals.robotics import prepare
    from verticals.robotics.config import RoboticsData

    with pytest.raises(ValueError, match="--data.context-dim must be >= 0, got -1"):
        prepare(RoboticsData(train_robots=2, validation_robots=1, test_robots=1, extrapolation_robots=1,
                             context_dim=-1), seed=0)
    from verticals.maintenance import model_spec
    from verticals.maintenance.config import MaintenanceData

    with pytest.raises(ValueError, match="maintenance: --data.context-dim must be >= 0, got -2"):
        model_spec(MaintenanceData(context_dim=-2), sensors=3, rul_cap=125.0)
