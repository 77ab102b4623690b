"""The ensemble start (core/ensemble.py): the averaged outputs of adapted candidates, scored and served as one model."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from core.algorithms.base import InnerConfig
from core.ensemble import average_of, ensemble_params, score_ensemble
from core.evaluation import Method, adapt_along, evaluate_sites, task_generator
from core.metrics import mse_metrics
from core.problem import SupervisedFewShotTask, SupervisedProblem
from core.tasks import EpisodeSpec, Federation, Site

W = torch.tensor([[1.0], [-2.0], [0.5]])


def _site(site_id: str, seed: int) -> Site:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 3, generator=gen)
    return Site(site_id, x, x @ W + 0.3 * torch.randn(40, 1, generator=gen))


def _params(scale: float) -> dict[str, torch.Tensor]:
    return {"weight": scale * W.T.clone(), "bias": torch.full((1,), scale - 1)}


def test_the_ensemble_scores_the_mean_of_its_members_outputs():
    model, site = nn.Linear(3, 1), _site("s", 0)
    task = SupervisedFewShotTask(model, "s", 5, (site.x[:5], site.y[:5]), (site.x[5:], site.y[5:]), mse_metrics)
    a, b = _params(0.2), _params(1.7)
    mean = (functional_call(model, a, (site.x[5:],)) + functional_call(model, b, (site.x[5:],))) / 2
    assert score_ensemble(task, [a, b])["mse"] == mse_metrics(mean, site.y[5:])["mse"]
    assert score_ensemble(task, [a, a])["mse"] == task.score(a)["mse"]  # identical members: the member itself
    assert score_ensemble(task, [a, b])["mse"] < (task.score(a)["mse"] + task.score(b)["mse"]) / 2
    served = average_of(model, 2)
    served.load_state_dict(ensemble_params([a, b]))
    with torch.no_grad():
        assert torch.allclose(served(site.x[5:]), mean)
    assert score_ensemble(object(), [a, b]) is None  # rollouts of one policy (RL): no averaged outputs to score


def test_the_protocols_ensemble_row_averages_the_members_adapted_as_their_own_rows():
    sites = {f"s{i}": _site(f"s{i}", i) for i in range(2)}
    problem = SupervisedProblem(federation=Federation(sites, {"test": list(sites)}), model_factory=lambda: nn.Linear(3, 1),
                                criterion=lambda p, y: torch.mean((p - y) ** 2), metrics=mse_metrics, headline="mse",
                                train_spec=EpisodeSpec(shots=5, query=5, by="row"), eval_by="row", higher_is_better=False)
    model, inner = nn.Linear(3, 1), InnerConfig()
    methods = [Method("fedavg+ft", _params(0.5), lr_by_steps={2: 0.05}), Method("fomaml", _params(1.5), lr_by_steps={2: 0.2}),
               Method("reptile", _params(0.0), lr_by_steps={2: 0.1})]
    grid = dict(shots_grid=[4], steps_grid=[0, 2], draws=2, seed=3, inner=inner)
    rows = evaluate_sites(problem, model, methods, list(sites.values()), ensemble=["fedavg+ft", "fomaml"], **grid)
    mse = rows[rows["metric"] == "mse"].set_index(["site", "method", "steps", "draw"])["value"]
    assert set(rows["method"]) == {"fedavg+ft", "fomaml", "reptile", "ensemble"}
    loss_fn = problem.loss_fn(model)
    for i, site in enumerate(sites.values()):
        for d in range(2):
            task = problem.few_shot_task(model, site, 4, task_generator(3, i, 4, d))
            adapted = [adapt_along(loss_fn, m, task.support(m.params), [0, 2], m.lr_by_steps[2], inner)
                       for m in methods[:2]]
            for s in (0, 2):
                x, y = task.heldout
                mean = sum(functional_call(model, p[s], (x,)) for p in adapted) / 2
                assert abs(mse[(site.site_id, "ensemble", s, d)] - mse_metrics(mean, y)["mse"]) < 1e-6
                members = (mse[(site.site_id, "fedavg+ft", s, d)] + mse[(site.site_id, "fomaml", s, d)]) / 2
                assert mse[(site.site_id, "ensemble", s, d)] <= members + 1e-9  # convex loss
    alone = evaluate_sites(problem, model, methods[:1], list(sites.values()), ensemble=["fedavg+ft"], **grid)
    assert "ensemble" not in set(alone["method"])  # one candidate: nothing to average
