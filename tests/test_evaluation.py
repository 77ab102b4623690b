"""The evaluation protocol: one cell recomputed by hand, intervals, paired differences, lr selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from core.adapt import adapt
from core.algorithms.base import InnerConfig
from core.evaluation import (Method, evaluate_sites, paired_differences, select_adaptation, summarize,
                             task_generator)
from data_adapters.digits import DigitsData
from verticals.digits import prepare


@pytest.fixture(scope="module")
def problem():
    return prepare(DigitsData(train_sites=4, validation_sites=2, test_sites=2), seed=3)


def _methods(problem):
    torch.manual_seed(0)
    a = {k: v.detach() for k, v in problem.make_model().named_parameters()}
    torch.manual_seed(1)
    b = {k: v.detach() for k, v in problem.make_model().named_parameters()}
    return [Method("fedavg", a, adapts=False), Method("fedavg+ft", a, lr_by_steps={1: 0.1, 3: 0.3}),
            Method("fomaml", b, lr_by_steps={1: 0.2, 3: 0.2})]


def test_one_cell_recomputed_independently(problem):
    model = problem.make_model()
    methods = _methods(problem)
    sites = problem.federation.role("test")
    inner = InnerConfig()
    rows = evaluate_sites(problem, model, methods, sites, shots_grid=[2, 4], steps_grid=[0, 1, 3], draws=3,
                          seed=11, inner=inner)
    # recompute: site 1, shots 4, draw 2, fomaml, 3 steps at lr 0.2
    site = sites[1]
    task = problem.few_shot_task(model, site, 4, task_generator(11, 1, 4, 2))
    support = task.support(methods[2].params)
    assert support[0].shape[0] == 4 * 5  # 4 shots x 5 classes
    adapted = adapt(problem.loss_fn(model), methods[2].params, support, 3, 0.2)
    expected = task.score(adapted)["accuracy"]
    cell = rows[(rows.site == site.site_id) & (rows.method == "fomaml") & (rows.shots == 4) & (rows.steps == 3)
                & (rows.draw == 2) & (rows.metric == "accuracy")]
    assert len(cell) == 1 and cell.value.iloc[0] == pytest.approx(expected, abs=1e-6)
    # fedavg is scored without adaptation only
    assert set(rows[rows.method == "fedavg"].steps) == {0}
    # the summary interval is the Student-t interval over draws
    summary = summarize(rows)
    vals = rows[(rows.site == site.site_id) & (rows.method == "fomaml") & (rows.shots == 4) & (rows.steps == 3)
                & (rows.metric == "accuracy")].value.to_numpy()
    s = summary[(summary.site == site.site_id) & (summary.method == "fomaml") & (summary.shots == 4)
                & (summary.steps == 3) & (summary.metric == "accuracy")].iloc[0]
    half = stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))
    assert s["mean"] == pytest.approx(vals.mean()) and s["ci95_high"] == pytest.approx(vals.mean() + half)
    pooled = summary[(summary.site == "ALL") & (summary.method == "fomaml") & (summary.shots == 4)
                     & (summary.steps == 3) & (summary.metric == "accuracy")].iloc[0]
    assert pooled["n"] == 6


def test_paired_differences_use_the_same_draws(problem):
    model = problem.make_model()
    methods = _methods(problem)
    rows = evaluate_sites(problem, model, methods, problem.federation.role("test"), shots_grid=[2],
                          steps_grid=[0, 1], draws=4, seed=5, inner=InnerConfig())
    paired = paired_differences(rows, "accuracy")
    sub = rows[(rows.metric == "accuracy") & (rows.steps == 1) & (rows.shots == 2)]
    a = sub[sub.method == "fomaml"].set_index(["site", "draw"]).value
    b = sub[sub.method == "fedavg+ft"].set_index(["site", "draw"]).value
    row = paired[(paired.site == "ALL") & (paired.steps == 1) & (paired.method == "fomaml")].iloc[0]
    assert row["mean_diff"] == pytest.approx(float((a - b).mean()))
    assert row["n"] == 8
    assert set(paired.method) == {"fomaml"}


def test_selection_uses_validation_sites_and_picks_best(problem):
    model = problem.make_model()
    methods = _methods(problem)
    table = select_adaptation(problem, model, methods, problem.federation.role("validation"), shots=2,
                              steps_grid=[0, 1, 3], lr_grid=[1e-6, 0.3], draws=2, seed=0, inner=InnerConfig())
    ft = methods[1]
    assert set(ft.lr_by_steps) == {1, 3}
    # a vanishing step size cannot beat a real one on fresh 5-way tasks from a random init
    chosen = table[(table.method == "fedavg+ft") & table.chosen]
    assert (chosen.lr == 0.3).all()
    assert ft.best_steps in {1, 3} and ft.best_lr == 0.3
    assert "fedavg" not in set(table.method)  # not adapted, nothing to choose


def test_a_methods_rate_is_described_as_what_its_adaptation_uses() -> None:
    """The console, the bundle line and the model card say ``learned step sizes`` for Meta-SGD-like candidates
    (their searched lr is never used), ``penalty`` for the Newton head, else the lr."""
    import torch

    from core.evaluation import Method

    plain = Method("fedavg+ft", {"w": torch.zeros(2)}, best_lr=0.03)
    learned = Method("fomaml-group", {"w": torch.zeros(2), "inner_lr/w": torch.tensor(0.1)}, best_lr=0.03)
    newton = Method("r2d2", {"w": torch.zeros(2)}, best_lr=0.1, best_recipe="newton-head")
    assert (plain.rate_text, learned.rate_text, newton.rate_text) == ("lr 0.03", "learned step sizes", "penalty 0.1")
