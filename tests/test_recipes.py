"""Adaptation recipes (core/recipes.py): parameter groups, head-only and LP-FT schedules, the Newton head
against scikit-learn's Ridge / LogisticRegression, and the ``<init>+<recipe>`` rows of the protocol."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from core.adapt import adapt
from core.evaluation import Method, trained_name, with_recipes
from core.problem import supervised_loss
from core.recipes import RECIPES, head_names, input_names, newton_head, recipe_trajectory


def _model(outputs: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, outputs)).double()


def _data(n: int = 40, classes: int = 0):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    if classes:
        return x, torch.randint(0, classes, (n,), generator=gen)
    return x, x[:, 0] * 2.0 - x[:, 1] + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)


def _features(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        phi = model[:2](x)
    return torch.cat([phi, torch.ones(len(x), 1, dtype=phi.dtype)], dim=1).numpy()  # bias as a feature


def test_the_head_is_the_last_module_with_parameters():
    assert head_names(_model()) == ("2.weight", "2.bias")
    assert set(RECIPES.names()) >= {"all", "head", "lp-ft", "newton-head"}


def test_a_head_only_recipe_leaves_the_body_bit_identical():
    model = _model()
    params = dict(model.named_parameters())
    loss = supervised_loss(model, lambda out, y: F.mse_loss(out.squeeze(-1), y))
    out = recipe_trajectory("head", loss, params, _data(), [1, 5], 0.1, head=head_names(model))
    for s in (1, 5):
        assert torch.equal(out[s]["0.weight"], params["0.weight"]) and torch.equal(out[s]["0.bias"], params["0.bias"])
        assert not torch.equal(out[s]["2.weight"], params["2.weight"])
    assert loss(out[5], _data()) < loss(out[1], _data()) < loss(params, _data())


def test_the_input_recipe_adapts_the_first_layer_only():
    model = _model()
    params = dict(model.named_parameters())
    assert input_names(list(params)) == ("0.weight", "0.bias")
    assert input_names(["context", "0.weight", "0.bias", "2.weight"]) == ("0.weight", "0.bias")  # a context is no layer
    loss = supervised_loss(model, lambda out, y: F.mse_loss(out.squeeze(-1), y))
    support = _data()
    out = recipe_trajectory("input", loss, params, support, [3], 0.1, head=head_names(model))
    assert torch.equal(out[3]["2.weight"], params["2.weight"]) and torch.equal(out[3]["2.bias"], params["2.bias"])
    same = adapt(loss, params, support, 3, 0.1, trainable=("0.weight", "0.bias"))
    assert all(torch.allclose(out[3][k], same[k]) for k in params)
    assert not torch.equal(out[3]["0.weight"], params["0.weight"]) and loss(out[3], support) < loss(params, support)


def test_lp_ft_probes_the_head_then_tunes_everything():
    model = _model()
    params = dict(model.named_parameters())
    loss = supervised_loss(model, lambda out, y: F.mse_loss(out.squeeze(-1), y))
    support, head = _data(), head_names(model)
    out = recipe_trajectory("lp-ft", loss, params, support, [1, 4], 0.05, head=head)
    one = adapt(loss, params, support, 1, 0.05, trainable=head)
    assert all(torch.equal(out[1][k], one[k]) for k in params)  # ceil(1/2) = 1 head step, 0 full steps
    probed = adapt(loss, params, support, 2, 0.05, trainable=head)
    full = adapt(loss, probed, support, 2, 0.05, anchor=params)
    assert all(torch.allclose(out[4][k], full[k]) for k in params)
    assert not torch.equal(out[4]["0.weight"], params["0.weight"])


def test_newton_head_is_ridge_for_a_squared_loss():
    model = _model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    params["2.weight"], params["2.bias"] = torch.zeros_like(params["2.weight"]), torch.zeros_like(params["2.bias"])
    x, y = _data()
    loss = supervised_loss(model, lambda out, t: F.mse_loss(out.squeeze(-1), t))
    penalty = 0.1
    fitted = newton_head(loss, params, (x, y), head_names(model), penalty, iterations=1)
    # mean squared loss + penalty/2 ||w||^2  <=>  sklearn's ||y - Xw||^2 + alpha ||w||^2 with alpha = n * penalty / 2
    ref = Ridge(alpha=len(x) * penalty / 2, fit_intercept=False).fit(_features(model, x), y.numpy())
    ours = torch.cat([fitted["2.weight"].reshape(-1), fitted["2.bias"]]).numpy()
    np.testing.assert_allclose(ours, ref.coef_, atol=1e-4)
    assert torch.equal(fitted["0.weight"], params["0.weight"])


@pytest.mark.parametrize("classes", [2, 3])
def test_newton_head_is_l2_logistic_regression(classes):
    outputs = 1 if classes == 2 else classes
    model = _model(outputs)
    params = {k: v.detach() for k, v in model.named_parameters()}
    params["2.weight"], params["2.bias"] = torch.zeros_like(params["2.weight"]), torch.zeros_like(params["2.bias"])
    x, y = _data(60, classes)
    if classes == 2:
        criterion = lambda out, t: F.binary_cross_entropy_with_logits(out.squeeze(-1), t.double())  # noqa: E731
    else:
        criterion = F.cross_entropy
    loss = supervised_loss(model, criterion)
    penalty = 0.05
    fitted = newton_head(loss, params, (x, y), head_names(model), penalty, iterations=12)
    # mean log loss + penalty/2 ||w||^2  <=>  sklearn's C * sum(log loss) + 1/2 ||w||^2 with C = 1 / (n * penalty)
    ref = LogisticRegression(C=1 / (len(x) * penalty), fit_intercept=False, tol=1e-12, max_iter=10_000)
    ref.fit(_features(model, x), y.numpy())
    w = torch.cat([fitted["2.weight"], fitted["2.bias"][:, None]], dim=1).numpy()
    if classes == 2:
        np.testing.assert_allclose(w.reshape(-1), ref.coef_.reshape(-1), atol=1e-4)
    else:  # sklearn's multinomial parameterization is the same full (classes x features) matrix
        np.testing.assert_allclose(w, ref.coef_, atol=1e-4)


def test_every_adapting_init_searches_the_recipes_and_gets_an_ablation_row_per_recipe():
    meta = {"w": torch.zeros(2)}
    methods = [Method("local", meta), Method("fedavg", meta, adapts=False), Method("fedavg+ft", meta),
               Method("fomaml", meta)]
    searched, ablation = with_recipes(methods, ["head", "newton-head"])
    assert [m.name for m in searched] == ["local", "fedavg", "fedavg+ft", "fomaml"]  # candidates stay one per init
    by_name = {m.name: m for m in searched}
    assert by_name["fomaml"].recipes == ("all", "head", "newton-head") and by_name["local"].recipes == ("all",)
    assert [m.name for m in ablation] == ["fedavg+head", "fedavg+newton-head", "fomaml+head", "fomaml+newton-head"]
    assert {m.name: m.recipes for m in ablation}["fomaml+head"] == ("head",)
    assert with_recipes(methods, []) == (methods, [])
    # regression: copies shared the search's containers, so the last row's choices leaked into the others
    every = searched + ablation
    for field in ("lr_by_steps", "recipe_by_steps", "validation_draws"):
        assert len({id(getattr(m, field)) for m in every}) == len(every), field
    assert trained_name("fedavg+head") == "fedavg" and trained_name("fedavg+ft") == "fedavg"
    assert trained_name("fomaml+lp-ft") == "fomaml"


def test_validation_chooses_the_recipe_per_steps_count_like_the_step_size():
    """A 'site' whose labels depend on the head only: a head-only recipe wins at 1 step on validation; the
    chosen recipe is what the held-out rows and the per-site choice then use."""
    from core.algorithms.base import InnerConfig
    from core.evaluation import method_candidate, select_adaptation
    from core.problem import SupervisedProblem
    from core.tasks import EpisodeSpec, Federation, Site

    gen = torch.Generator().manual_seed(0)
    sites = []
    for i in range(3):
        x = torch.randn(60, 5, generator=gen, dtype=torch.float64)
        sites.append(Site(f"s{i}", x, x[:, 0] * (2.0 + i) + 0.05 * torch.randn(60, generator=gen, dtype=torch.float64)))
    fed = Federation({s.site_id: s for s in sites}, {"train": ["s0"], "validation": ["s1", "s2"]})
    problem = SupervisedProblem(fed, lambda: _model(), lambda out, y: F.mse_loss(out.squeeze(-1), y),
                                lambda out, y: {"mse": float(F.mse_loss(out.squeeze(-1), y))}, "mse",
                                EpisodeSpec(shots=5, query=5, by="row"), eval_by="row", higher_is_better=False)
    model = _model()
    meta = {k: v.detach() for k, v in model.named_parameters()}
    method = Method("fomaml", meta, recipes=("all", "newton-head"))
    table = select_adaptation(problem, model, [method], fed.role("validation"), shots=20, steps_grid=[0, 1],
                              lr_grid=[0.01, 0.1], draws=2, seed=0, inner=InnerConfig())
    assert set(table["recipe"]) == {"all", "newton-head"} and table["chosen"].sum() == 1
    chosen = table[table["chosen"]].iloc[0]
    assert method.recipe_by_steps[1] == chosen["recipe"] == method.recipe_for(1)
    assert method_candidate(method, InnerConfig()).recipe_for(1) == method.recipe_by_steps[1]


def test_an_unknown_recipe_is_refused_before_any_data():
    from core.config import RunConfig, check_run_config

    cfg = RunConfig(data=None)
    cfg.eval.recipes = ["head", "bogus"]
    with pytest.raises(ValueError, match="--eval.recipes bogus"):
        check_run_config(cfg)


def test_onboarding_reads_each_candidates_recipe():
    from types import SimpleNamespace

    from pipelines.onboard import bundle_candidates

    meta = {"w": torch.zeros(2)}
    loaded = SimpleNamespace(uri="models:/x/1", candidates={"fedavg+ft": meta, "fomaml": meta}, info={
        "candidates": {"fedavg+ft": {"best_lr": 0.1},
                       "fomaml": {"best_lr": 0.3, "recipe_by_steps": {"5": "head"}, "best_recipe": "lp-ft"}}})
    out = bundle_candidates(loaded, None, ("w",))
    assert out["fomaml"].recipe_for(5) == "head" and out["fomaml"].recipe_for(7) == "lp-ft"
    assert out["fedavg+ft"].recipe_for(5) == "all"
    assert out["fomaml"].head == ("w",) and out["fomaml"].lr_for(5) == 0.3


def test_functional_call_of_the_fitted_head_predicts_better_than_the_start():
    model = _model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = _data()
    loss = supervised_loss(model, lambda out, t: F.mse_loss(out.squeeze(-1), t))
    fitted = recipe_trajectory("newton-head", loss, params, (x, y), [1], 0.01, head=head_names(model))[1]
    pred = functional_call(model, fitted, (x,)).squeeze(-1)
    assert F.mse_loss(pred, y) < loss(params, (x, y))


def test_fml_verticals_lists_every_recipe_and_every_algorithm() -> None:
    from core.algorithms import ALGORITHMS
    from core.recipes import RECIPES
    from pipelines.cli import cmd_verticals
    from pipelines.console import console

    with console.capture() as captured:
        assert cmd_verticals([]) == 0
    out = captured.get()
    missing = [n for n in [*RECIPES.names(), *ALGORITHMS.names()] if f"\n  {n} " not in out]
    assert not missing, out
