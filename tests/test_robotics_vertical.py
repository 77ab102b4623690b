"""The robotics vertical: policy-gradient loss, rollout episodes, few-shot tasks, meta-training, onboarding."""
from __future__ import annotations

import json

import pytest
import torch
from torch.func import functional_call, grad

from core.adapt import adapt
from core.algorithms import InnerConfig, get_algorithm
from core.config import FederatedConfig, ServerConfig
from core.algorithms import split_meta
from core.learner import MetaLearner, fit_meta_learner
from core.rounds import client_updates
from core.seeds import round_generator
from core.tasks import SiteDataError
from core.vertical import VERTICALS
from data_adapters.robot_envs import RobotParamError, SimulationError
from verticals.robotics import SPEC, load_new_site, prepare
from verticals.robotics.config import RoboticsData
from verticals.robotics.pg import advantages, discounted_cumsum
from verticals.robotics.policy import mean_fn
from verticals.robotics.problem import RoboticsProblem

SMALL = dict(train_robots=20, validation_robots=2, test_robots=4, extrapolation_robots=2, horizon=50,
             train_rollouts=10, eval_rollouts=10)


@pytest.fixture(scope="module")
def problem() -> RoboticsProblem:
    return prepare(RoboticsData(**SMALL), seed=0)


def init_params(problem: RoboticsProblem, seed: int = 0):
    torch.manual_seed(seed)
    model = problem.make_model()
    return model, {k: v.detach() for k, v in model.named_parameters()}


def test_spec_is_registered_as_a_non_row_vertical() -> None:
    assert VERTICALS.get("robotics") is SPEC
    assert SPEC.rows_based is False and SPEC.onboard_flags == {"robot": "robot"}
    assert SPEC.preset_path("quick").exists() and SPEC.preset_path("full").exists()


def test_fleet_roles_and_json_preprocessing(problem: RoboticsProblem) -> None:
    roles = problem.federation.roles
    assert len(roles["train"]) == 20 and len(roles["validation"]) == 2
    assert roles["test"] == ["test-000", "test-001", "test-002", "test-003", "extrap-000", "extrap-001"]
    pre = json.loads(json.dumps(problem.preprocessing))
    assert pre["family"] == "point" and pre["horizon"] == 50 and pre["obs_dim"] == 2
    assert problem.headline == "return" and problem.higher_is_better
    assert problem.input_example().shape == (2, 2)


def test_loss_is_differentiable_through_functional_call(problem: RoboticsProblem) -> None:
    model, params = init_params(problem)
    episode = problem.train_episode("train-000", params, torch.Generator().manual_seed(0))
    obs, actions, adv, logp_old = episode.support
    assert obs.shape == (10 * 50, 2) and actions.shape == (500, 2) and adv.shape == logp_old.shape == (500,)
    assert abs(float(adv.mean())) < 1e-5 and abs(float(adv.std()) - 1) < 1e-3  # normalized advantages
    loss_fn = problem.loss_fn(model)
    g = grad(loss_fn)(params, episode.support)
    assert g.keys() == params.keys() and all(torch.isfinite(v).all() for v in g.values())
    assert float(g["log_std"].abs().sum()) > 0 and float(g["net.0.weight"].abs().sum()) > 0
    # the same gradient through the module's own autograd
    for p in model.parameters():
        p.grad = None
    dist = torch.distributions.Normal(model(obs), torch.exp(model.log_std))
    (-(dist.log_prob(actions).sum(-1) * adv).mean()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(g[name], p.grad, atol=1e-5, rtol=1e-4)
    # logp_old is the log-density under the collecting parameters
    ref = torch.distributions.Normal(model(obs), torch.exp(model.log_std)).log_prob(actions).sum(-1)
    torch.testing.assert_close(logp_old, ref.detach(), atol=1e-5, rtol=1e-5)


def test_fast_rollout_forward_equals_functional_call(problem: RoboticsProblem) -> None:
    model, params = init_params(problem, seed=4)
    obs = torch.randn(7, 2)
    torch.testing.assert_close(mean_fn(model, params)(obs), functional_call(model, params, (obs,)))


def test_discounted_cumsum_and_advantages() -> None:
    x = torch.randn(3, 6, dtype=torch.float64)
    ref, running = torch.empty_like(x), torch.zeros(3, dtype=torch.float64)
    for t in range(5, -1, -1):
        running = x[:, t] + 0.9 * running
        ref[:, t] = running
    torch.testing.assert_close(discounted_cumsum(x, 0.9), ref)
    adv = advantages(torch.randn(4, 6, 2), torch.randn(4, 6), 0.99, 0.95)
    assert adv.shape == (4, 6) and torch.isfinite(adv).all()


def test_train_episode_is_seeded_and_query_fn_rolls_out_the_adapted_policy(problem: RoboticsProblem) -> None:
    _, params = init_params(problem)
    a = problem.train_episode("train-001", params, torch.Generator().manual_seed(5))
    b = problem.train_episode("train-001", params, torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip((*a.support, *a.query), (*b.support, *b.query)))
    assert not torch.equal(a.support[1], a.query[1])  # the fixed query is a second batch of rollouts
    assert all(torch.equal(u, v) for u, v in zip(a.query_fn(params), b.query_fn(params)))
    shifted = {k: v + 0.5 if k == "net.4.bias" else v for k, v in params.items()}
    assert not torch.equal(a.query_fn(shifted)[0], a.query_fn(params)[0])  # rollouts of the given params


def test_few_shot_task_uses_common_random_numbers(problem: RoboticsProblem) -> None:
    model, params = init_params(problem)
    site = problem.federation.sites["test-000"]
    task = problem.few_shot_task(model, site, 5, torch.Generator().manual_seed(1))
    again = problem.few_shot_task(model, site, 5, torch.Generator().manual_seed(1))
    assert task.score(params) == again.score(params)
    assert set(task.score(params)) == {"return", "success_rate"}
    assert task.support(params)[0].shape == (5 * 50, 2)
    adapted = adapt(problem.loss_fn(model), params, task.support(params), 1, 0.1)
    assert task.score(adapted) != task.score(params)
    with pytest.raises(SiteDataError, match="at least 1 rollout"):
        problem.few_shot_task(model, site, 0, torch.Generator().manual_seed(1)).support(params)


@pytest.mark.parametrize("name", ["fedavg", "fomaml", "reptile", "perfedavg"])
def test_every_rollout_algorithm_runs_a_round(problem: RoboticsProblem, name: str) -> None:
    model, params = init_params(problem)
    gen = round_generator(0, 0)
    episodes = [problem.train_episode(s, params, gen) for s in problem.train_site_ids()[:2]]
    out = client_updates(get_algorithm(name), problem.loss_fn(model), params, episodes, InnerConfig(1, 0.1))
    assert not out.vectorized and all(torch.isfinite(v).all() for v in out.directions.values())


def test_second_order_algorithms_are_refused_with_a_clear_error(problem: RoboticsProblem) -> None:
    model, params = init_params(problem)
    ep = [problem.train_episode("train-000", params, torch.Generator().manual_seed(0))]
    for name in ("maml", "metasgd", "perfedavg-hf"):
        with pytest.raises(ValueError, match=f"{name!r} needs a fixed query set"):
            client_updates(get_algorithm(name), problem.loss_fn(model), params, ep, InnerConfig(1, 0.1))


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(KeyError, match="unknown robot family 'rover'"):
        prepare(RoboticsData(family="rover"), seed=0)
    with pytest.raises(KeyError, match="unknown policy-gradient surrogate 'a2c'"):
        prepare(RoboticsData(**{**SMALL, "surrogate": "a2c"}), seed=0)
    with pytest.raises(ValueError, match="train_rollouts and eval_rollouts must be >= 1"):
        prepare(RoboticsData(**{**SMALL, "eval_rollouts": 0}), seed=0)


def test_nan_policy_stops_training(problem: RoboticsProblem) -> None:
    model, params = init_params(problem)
    bad = {k: torch.full_like(v, float("nan")) if k == "net.0.weight" else v for k, v in params.items()}
    with pytest.raises(SimulationError, match="non-finite action"):
        problem.train_episode("train-000", bad, torch.Generator().manual_seed(0))

    class NanProblem(RoboticsProblem):
        def make_model(self):
            model = super().make_model()
            with torch.no_grad():
                model.net[0].weight.fill_(float("nan"))
            return model

    nan_problem = NanProblem(problem.federation, problem.simulate, problem.settings, problem.preprocessing)
    learner = MetaLearner(nan_problem, "fomaml", InnerConfig(1, 0.1), FederatedConfig(rounds=2, clients_per_round=2,
                          val_every=2), ServerConfig("adam", 0.01), seed=0)
    with pytest.raises(SimulationError):
        fit_meta_learner(learner, progress=False)


def heldout_returns(problem: RoboticsProblem, model, meta, lr: float = 0.1) -> tuple[float, float]:
    loss_fn = problem.loss_fn(model)
    before, after = [], []
    for i, site in enumerate(problem.federation.role("test")):
        for d in range(2):
            task = problem.few_shot_task(model, site, 10, torch.Generator().manual_seed(100 * i + d))
            before.append(task.score(meta)["return"])
            after.append(task.score(adapt(loss_fn, meta, task.support(meta), 1, lr))["return"])
    return sum(before) / len(before), sum(after) / len(after)


def test_step_sizes_learned_per_group_meta_train_on_rollouts(problem: RoboticsProblem) -> None:
    """fomaml-group through the learner: episodes are collected with the policy's parameters (not its step sizes),
    the adapted policy's rollouts are the query, and each group's rate moves as one."""
    learner = MetaLearner(problem, "fomaml-group", InnerConfig(steps=1, lr=0.1),
                          FederatedConfig(rounds=3, clients_per_round=2, val_every=3), ServerConfig("adam", 0.02), seed=0)
    fit_meta_learner(learner, progress=False)
    lrs = split_meta(learner.meta_params())[1]
    for group, names in problem.param_groups(learner.model).items():
        assert len({float(lrs[n]) for n in names}) == 1, group
    assert all(float(v) != pytest.approx(0.1) for v in lrs.values())


def test_meta_training_improves_return_after_adaptation(problem: RoboticsProblem) -> None:
    """FO-MAML with the core's MetaLearner: after one adaptation step the meta-trained policy beats its own
    unadapted return and a fresh policy adapted with the same step, on never-seen robots."""
    learner = MetaLearner(problem, "fomaml", InnerConfig(steps=1, lr=0.1),
                          FederatedConfig(rounds=30, clients_per_round=5, val_every=30),
                          ServerConfig("adam", 0.02), seed=0)
    fit_meta_learner(learner, progress=False)
    meta = learner.meta_params()
    before, after = heldout_returns(problem, learner.model, meta)
    model, fresh = init_params(problem, seed=1)
    fresh_before, fresh_after = heldout_returns(problem, model, fresh)
    # measured: before about -20, after about -9; fresh policy about -40 -> -32 (horizon 50)
    assert after > before + 5.0, (before, after)
    assert after > fresh_after + 8.0, (after, fresh_after)


def test_onboarding_a_new_robot(problem: RoboticsProblem) -> None:
    cfg = RoboticsData(robot="goal=0.3,-0.2;gain=2.2;rotation=10")
    new_problem, site = load_new_site(cfg, problem.preprocessing, "dock-7")
    assert site.site_id == "dock-7" and new_problem.federation.roles["test"] == ["dock-7"]
    assert site.metadata["kind"] == "extrapolation" and site.metadata["extrapolated"] == ["gain"]
    assert site.metadata["robot"]["goal"] == [0.3, -0.2]
    model, params = init_params(new_problem)
    assert set(new_problem.few_shot_task(model, site, 2, torch.Generator()).score(params)) == {"return", "success_rate"}
    with pytest.raises(ValueError, match="needs the new robot's parameters: --robot 'goal=0,0;gain=1;rotation=0"):
        load_new_site(RoboticsData(), problem.preprocessing, None)
    with pytest.raises(RobotParamError, match="robot 'dock-8': gain=-1 is outside its physical limits"):
        load_new_site(RoboticsData(robot="gain=-1"), problem.preprocessing, "dock-8")


@pytest.mark.parametrize("family", ["pendulum", "cheetah"])
def test_other_families_serve_the_same_problem(family: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to ./MUJOCO_LOG.TXT
    if family == "cheetah":
        pytest.importorskip("mujoco", reason='MuJoCo not installed: pip install "gymnasium[mujoco]"')
    prob = prepare(RoboticsData(family=family, train_robots=2, validation_robots=0, test_robots=1,
                                extrapolation_robots=1, horizon=8, train_rollouts=2, eval_rollouts=2), seed=0)
    model, params = init_params(prob)
    episode = prob.train_episode("train-000", params, torch.Generator().manual_seed(0))
    assert episode.support[0].shape == (16, prob.settings.obs_dim)
    out = client_updates(get_algorithm("fomaml"), prob.loss_fn(model), params, [episode], InnerConfig(1, 0.1))
    assert all(torch.isfinite(v).all() for v in out.directions.values())
    task = prob.few_shot_task(model, prob.federation.sites["extrap-000"], 2, torch.Generator().manual_seed(0))
    metrics = task.score(adapt(prob.loss_fn(model), params, task.support(params), 1, 0.1))
    assert set(metrics) == ({"return", "success_rate"} if family == "pendulum" else {"return"})


def test_diverged_adaptation_scores_minus_infinity(problem: RoboticsProblem) -> None:
    model, params = init_params(problem)
    task = problem.few_shot_task(model, problem.federation.sites["test-000"], 2, torch.Generator().manual_seed(0))
    nan = {k: torch.full_like(v, float("nan")) for k, v in params.items()}
    assert task.score(nan) == {"return": float("-inf"), "success_rate": 0.0}


def test_ppo_takes_the_reinforce_step_first_and_stays_near_the_batch_after() -> None:
    """The default surrogate is PPO's clipped ratio: its first step on a batch collected by the same policy is
    REINFORCE's, bit for bit (so first-order one-inner-step meta-training is unchanged), while later steps on the SAME batch
    stop pushing samples whose ratio left [0.8, 1.2] -- REINFORCE keeps going and leaves the batch behind
    (measured: multi-step adaptation reached -inf returns on the full preset)."""
    assert RoboticsData().surrogate == "ppo"
    problems = {name: prepare(RoboticsData(**SMALL, surrogate=name), seed=0) for name in ("reinforce", "ppo")}
    model, params = init_params(problems["ppo"])
    batch = problems["ppo"].rollout_batch(problems["ppo"].federation.sites["train-000"], 10, 0, params)
    obs, actions, _, logp_old = batch
    moved = {}
    for name, p in problems.items():
        loss_fn = p.loss_fn(model)
        one = adapt(loss_fn, params, batch, 1, 0.3)
        moved[name] = adapt(loss_fn, params, batch, 20, 0.3)
        if name == "reinforce":
            first = one
        else:
            assert all(torch.equal(one[k], first[k]) for k in params)
    def drift(p):  # how far the adapted policy's log-density of the batch's actions moved
        from verticals.robotics.pg import gaussian_logp
        return float((gaussian_logp(functional_call(model, p, (obs,)), p["log_std"], actions) - logp_old).abs().mean())
    assert all(torch.isfinite(v).all() for v in moved["ppo"].values()) and drift(moved["ppo"]) < 0.5
    assert not drift(moved["reinforce"]) < 2 * drift(moved["ppo"])  # much further, or diverged to NaN


def test_ppo_meta_gradient_through_one_step_is_reinforces() -> None:
    """Second-order meta-training (CAVIA) differentiates THROUGH the inner step, so it sees the surrogate's second
    derivative. The ratio keeps REINFORCE's there: the meta-gradient of a one-step inner loop equals REINFORCE's at
    the policy that collected the batch (the exponential's extra score term made CAVIA collapse on some seeds)."""
    problems = {name: prepare(RoboticsData(**SMALL, surrogate=name), seed=0) for name in ("reinforce", "ppo")}
    model, params = init_params(problems["ppo"])
    site = problems["ppo"].federation.sites["train-000"]
    support = problems["ppo"].rollout_batch(site, 10, 0, params)
    adapted = adapt(problems["ppo"].loss_fn(model), params, support, 1, 0.3)
    query = problems["ppo"].rollout_batch(site, 10, 1, adapted)  # collected by the adapted policy, as in CAVIA
    meta_grads = {}
    for name, p in problems.items():
        loss_fn = p.loss_fn(model)
        meta_grads[name] = torch.func.grad(lambda q: loss_fn(adapt(loss_fn, q, support, 1, 0.3), query))(params)
    assert all(torch.allclose(meta_grads["ppo"][k], meta_grads["reinforce"][k], rtol=1e-5, atol=1e-7) for k in params)


def test_the_reinforce_recipe_adapts_on_reinforces_surrogate_whatever_the_run_trained_with() -> None:
    """`reinforce` lets the validation robots choose the surrogate per method, like the step size: on a PPO run it
    is exactly `all` on a REINFORCE run (one step is the same under both; later steps on the same rollouts are
    not), and it refuses a loss that is not a policy gradient's, saying so."""
    from core.recipes import RecipeNotApplicable, recipe_trajectory
    from core.types import Batch

    problems = {name: prepare(RoboticsData(**SMALL, surrogate=name), seed=0) for name in ("reinforce", "ppo")}
    model, params = init_params(problems["ppo"])
    batch = problems["ppo"].rollout_batch(problems["ppo"].federation.sites["train-000"], 10, 0, params)
    ppo, reinforce = problems["ppo"].loss_fn(model), problems["reinforce"].loss_fn(model)
    recipe = recipe_trajectory("reinforce", ppo, params, batch, [1, 5], 0.3)
    plain = recipe_trajectory("all", reinforce, params, batch, [1, 5], 0.3)
    clipped = recipe_trajectory("all", ppo, params, batch, [1, 5], 0.3)
    assert all(torch.equal(recipe[s][k], plain[s][k]) for s in (1, 5) for k in params)
    assert all(torch.equal(recipe[1][k], clipped[1][k]) for k in params)
    assert not all(torch.equal(recipe[5][k], clipped[5][k]) for k in params)
    assert ppo.surrogate == "ppo"  # the run's loss is left as it was

    def squared(p: dict, b: Batch) -> torch.Tensor:
        return sum((v ** 2).sum() for v in p.values())

    with pytest.raises(RecipeNotApplicable, match="not one \\(the robotics vertical's is\\)"):
        recipe_trajectory("reinforce", squared, params, batch, [1], 0.3)


def test_context_reinforce_adapts_only_the_context_on_reinforces_surrogate() -> None:
    """CAVIA's recipe with the surrogate switched: every weight stays bit-identical, the context moves exactly as
    `context` moves on a REINFORCE run."""
    from core.context import context_names
    from core.recipes import recipe_trajectory

    problems = {name: prepare(RoboticsData(**SMALL, surrogate=name, context_dim=3), seed=0)
                for name in ("reinforce", "ppo")}
    model, params = init_params(problems["ppo"])
    batch = problems["ppo"].rollout_batch(problems["ppo"].federation.sites["train-000"], 10, 0, params)
    switched = recipe_trajectory("context-reinforce", problems["ppo"].loss_fn(model), params, batch, [1, 5], 1.0)
    plain = recipe_trajectory("context", problems["reinforce"].loss_fn(model), params, batch, [1, 5], 1.0)
    clipped = recipe_trajectory("context", problems["ppo"].loss_fn(model), params, batch, [1, 5], 1.0)
    context = context_names(params)
    assert context and all(torch.equal(switched[5][k], params[k]) for k in params if k not in context)
    assert all(torch.equal(switched[s][k], plain[s][k]) for s in (1, 5) for k in params)
    assert not all(torch.equal(switched[5][k], clipped[5][k]) for k in context)


def test_onboarding_adapts_a_robot_even_when_the_step_raises_the_surrogate(problem: RoboticsProblem) -> None:
    """Onboarding keeps the start when adapting RAISED a supervised support loss (a step size that diverged), but a
    policy-gradient step aims at the return: a meta-learned start's step raises the clipped surrogate on its own
    rollouts as it moves to a better policy (measured on `fml run robotics --preset quick`'s FO-MAML: surrogate 0 ->
    0.30, return -27.5 -> -10.8). Such a robot is adapted, not kept at its start."""
    from core.choice import Candidate
    from pipelines.onboard import _adapt

    model, params = init_params(problem)
    site = problem.federation.role("test")[0]
    task = problem.few_shot_task(model, site, 2, torch.Generator().manual_seed(0))
    loss_fn = problem.loss_fn(model)
    member = Candidate("fomaml", params, lr_for=lambda steps: 1.0)
    support = task.support(params)
    raised = adapt(loss_fn, params, support, 1, 1.0)
    assert float(loss_fn(raised, support)) > float(loss_fn(params, support)) + 0.1  # the surrogate rises
    adapted, diverged = _adapt(member, task, loss_fn, 1)
    assert not diverged and not task.support_loss_falls
    assert any(not torch.equal(adapted[k], params[k]) for k in params)  # moved off the start ...
    assert all(torch.allclose(adapted[k], raised[k]) for k in params)  # ... by that very step
