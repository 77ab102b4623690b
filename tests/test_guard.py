"""The divergence guard: one rule for `fml onboard` and the held-out protocol (`eval.guard`)."""
from __future__ import annotations

import pytest
import torch

from core.algorithms.base import InnerConfig
from core.evaluation import Method, evaluate_sites, kept_start_counts, method_candidate, task_generator
from core.guard import divergence
from data_adapters.digits import DigitsData
from pipelines.onboard import guarded_adaptation
from pipelines.closing import guard_sentence
from verticals.digits import prepare

GRID = dict(shots_grid=[2], steps_grid=[0, 1, 3], draws=3, seed=7, inner=InnerConfig())


@pytest.fixture(scope="module")
def problem():
    return prepare(DigitsData(train_sites=4, validation_sites=2, test_sites=2), seed=3)


def _params(problem, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach() for k, v in problem.make_model().named_parameters()}


def _methods(problem) -> list[Method]:
    start = _params(problem, 0)
    # a step size far too large for any site (it raises the support loss) next to a sensible one
    return [Method("fedavg+ft", start, lr_by_steps={1: 0.1, 3: 0.1}),
            Method("fomaml", _params(problem, 1), lr_by_steps={1: 300.0, 3: 300.0})]


def test_divergence_names_non_finite_weights_and_a_raised_support_loss(problem) -> None:
    model = problem.make_model()
    loss_fn = problem.loss_fn(model)
    start = _params(problem, 0)
    task = problem.few_shot_task(model, problem.federation.role("test")[0], 2, task_generator(0, 0, 2, 0))
    support = task.support(start)
    lowered = {k: v - 0.05 * g for (k, v), g in zip(start.items(), torch.autograd.grad(
        loss_fn({k: v.requires_grad_() for k, v in start.items()}, support), list(start.values())))}
    start = {k: v.detach() for k, v in start.items()}
    lowered = {k: v.detach() for k, v in lowered.items()}
    assert divergence(loss_fn, start, lowered, support) is None
    assert "raised its support loss" in divergence(loss_fn, lowered, start, support)
    broken = {**lowered, next(iter(lowered)): torch.full_like(next(iter(lowered.values())), float("nan"))}
    assert "non-finite" in divergence(loss_fn, start, broken, support)
    assert "non-finite" in divergence(loss_fn, start, broken, support, loss_should_fall=False)
    # a policy-gradient surrogate: a raised loss is not divergence
    assert divergence(loss_fn, lowered, start, support, loss_should_fall=False) is None
    # the loss compared is the one adapting minimizes: a strong proximal pull makes moving away cost more
    assert divergence(loss_fn, start, lowered, support, adapt_kwargs={"proximal": 1e6}) is not None


def test_the_guarded_protocol_scores_the_start_where_adaptation_diverged(problem) -> None:
    model = problem.make_model()
    sites = problem.federation.role("test")
    methods = _methods(problem)
    plain = evaluate_sites(problem, model, methods, sites, **GRID)
    guarded = evaluate_sites(problem, model, methods, sites, guard=True, **GRID)
    acc = lambda rows, m, s: rows[(rows.method == m) & (rows.steps == s) & (rows.metric == "accuracy")  # noqa: E731
                                  ].sort_values(["site", "draw"])
    # the sensible step size never fires: its rows are the unguarded protocol's, bit for bit
    for s in (0, 1, 3):
        assert acc(guarded, "fedavg+ft", s).value.tolist() == acc(plain, "fedavg+ft", s).value.tolist()
    assert not guarded[guarded.method == "fedavg+ft"].kept_start.any()
    # the huge one fires on every draw: scored as its start, unadapted, where unguarded it is not
    for s in (1, 3):
        fired = acc(guarded, "fomaml", s)
        assert fired.kept_start.all()
        assert fired.value.tolist() == acc(guarded, "fomaml", 0).value.tolist()
        assert fired.value.tolist() != acc(plain, "fomaml", s).value.tolist()
    assert not acc(guarded, "fomaml", 0).kept_start.any()
    # what `fml run` says and records: per method, kept of adapted cells (2 sites x 3 draws x 2 steps counts)
    counts = kept_start_counts(guarded)
    assert counts == {"fedavg+ft": [0, 12], "fomaml": [12, 12]}
    assert kept_start_counts(plain) == {"fedavg+ft": [0, 12], "fomaml": [0, 12]}
    said = guard_sentence(counts, guard=True)
    assert "fomaml 12 of 12" in said and "fedavg+ft" not in said
    assert "no adaptation diverged" in guard_sentence({"fedavg+ft": [0, 12]}, guard=True)
    assert "--eval.no-guard" in guard_sentence({}, guard=False)


def test_the_protocol_keeps_the_start_exactly_where_onboarding_does(problem) -> None:
    model = problem.make_model()
    loss_fn = problem.loss_fn(model)
    sites = problem.federation.role("test")
    methods = _methods(problem)
    # a step size that blows up on some draws only, so both answers occur
    methods[1] = Method("fomaml", methods[1].params, lr_by_steps={1: 3.0, 3: 3.0})
    rows = evaluate_sites(problem, model, methods, sites, guard=True, **GRID)
    head = problem.param_groups(model)["head"]
    seen = set()
    for method in methods:
        candidate = method_candidate(method, GRID["inner"], head)
        for i, site in enumerate(sites):
            for d in range(GRID["draws"]):
                for s in (1, 3):
                    task = problem.few_shot_task(model, site, 2, task_generator(GRID["seed"], i, 2, d))
                    params, why = guarded_adaptation(candidate, task, loss_fn, s)
                    cell = rows[(rows.method == method.name) & (rows.site == site.site_id) & (rows.draw == d)
                                & (rows.steps == s) & (rows.metric == "accuracy")].iloc[0]
                    assert bool(cell.kept_start) == (why is not None)
                    assert cell.value == pytest.approx(task.score(params)["accuracy"], abs=1e-6)
                    seen.add(why is not None)
    assert seen == {True, False}


def test_runs_score_with_the_guard_unless_told_not_to() -> None:
    import verticals
    from core.vertical import VERTICALS
    from pipelines.config import resolve_run_config

    verticals.load_all()
    spec = VERTICALS.get("digits")
    assert resolve_run_config(spec, "quick", [], prog="fml run digits").eval.guard is True
    assert resolve_run_config(spec, "quick", ["--eval.no-guard"], prog="fml run digits").eval.guard is False


def test_guard_signals_splits_the_raised_loss_cells_by_the_support_error() -> None:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from benchmarks.guard_signals import misordered_pairs, split

    gen = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(40, generator=gen), torch.arange(40) % 2
    assert misordered_pairs(scores, labels) == pytest.approx(1 - roc_auc_score(labels, scores))
    assert misordered_pairs(torch.zeros(6), torch.arange(6) % 2) == 0.5  # ties count half
    cells = pd.DataFrame({"finite": [True, True, True, True, False],
                          "loss_before": [1.0, 1.0, 1.0, 1.0, 1.0], "loss_after": [0.5, 2.0, 3.0, 2.0, float("nan")],
                          "error_before": [0.5, 0.5, 0.5, None, 0.5], "error_after": [0.4, 0.2, 0.5, None, None],
                          "gain": [0.1, 0.3, -0.2, -0.1, float("nan")]})
    out = split(cells)
    assert out["adapted_cells"] == 5 and out["non_finite"] == 1
    assert out["loss_rose"] == {"cells": 3, "mean_gain": 0.0, "helped": 1, "hurt": 2}
    assert out["loss_rose_error_fell"] == {"cells": 1, "mean_gain": 0.3, "helped": 1, "hurt": 0}
    assert out["loss_rose_error_did_not_fall"]["cells"] == 2  # the same error, or none measured


def test_guard_signals_counts_the_support_errors_the_task_scores(problem) -> None:
    from benchmarks.guard_signals import support_error

    model = problem.make_model()
    params = _params(problem, 0)
    task = problem.few_shot_task(model, problem.federation.role("test")[0], 3, task_generator(0, 0, 3, 0))
    x, y = task.support(params)
    wrong = (torch.func.functional_call(model, params, (x,)).argmax(-1) != y).float().mean()
    assert support_error(task, params) == pytest.approx(float(wrong))  # a classifier: misclassified rows
    task.stratified = False  # rows that are not classes: a regression's loss is its only error
    assert support_error(task, params) is None


def _three_row_classifier():
    """Rows i = one-hot inputs, so a linear classifier's column i holds row i's two logits."""
    x, y = torch.eye(3), torch.tensor([0, 0, 0])
    loss_fn = lambda p, batch: torch.nn.functional.cross_entropy(batch[0] @ p["w"].T, batch[1])  # noqa: E731
    errors = lambda p: int(((x @ p["w"].T).argmax(-1) != y).sum())  # noqa: E731
    return (x, y), loss_fn, errors


def test_a_classifier_keeps_a_step_that_raised_its_loss_but_fixed_support_rows() -> None:
    support, loss_fn, errors = _three_row_classifier()
    # start: rows 0 and 1 wrong by a margin of 2, row 2 right by 20 (loss 1.42); adapted: rows 0 and 1 right by 0.5,
    # row 2 wrong by 6 (loss 2.31): the loss rose, one wrong row fewer
    start = {"w": torch.tensor([[0.0, 0.0, 20.0], [2.0, 2.0, 0.0]])}
    fixed = {"w": torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 6.0]])}
    assert float(loss_fn(fixed, support)) > float(loss_fn(start, support)) and errors(fixed) < errors(start)
    assert divergence(loss_fn, start, fixed, support, support_errors=errors) is None
    assert "raised its support loss" in divergence(loss_fn, start, fixed, support)  # no count: the loss alone
    # a rise with as many wrong rows is divergence, and says so
    same = {"w": torch.tensor([[0.5, 0.0, 0.0], [0.0, 2.0, 6.0]])}
    assert errors(same) == errors(start) and float(loss_fn(same, support)) > float(loss_fn(start, support))
    assert "no fewer support rows right (2 -> 2 wrong)" in divergence(loss_fn, start, same, support,
                                                                      support_errors=errors)
    # a task that does not count wrong rows (a regression, a ranked binary task) is judged by the loss alone
    assert "raised its support loss" in divergence(loss_fn, start, fixed, support, support_errors=lambda p: None)


def test_a_classifiers_task_counts_its_wrong_support_rows_and_a_ranked_one_does_not(problem) -> None:
    model = problem.make_model()
    params = _params(problem, 0)
    task = problem.few_shot_task(model, problem.federation.role("test")[0], 3, task_generator(0, 0, 3, 0))
    x, y = task.support(params)
    wrong = int((torch.func.functional_call(model, params, (x,)).argmax(-1) != y).sum())
    assert task.support_errors(params) == wrong and 0 < wrong < len(y)
    task.ranked = True  # a binary task ranked by AUROC / PR-AUC: judged by its loss (measured on fraud)
    assert task.support_errors(params) is None


def test_the_protocol_and_onboarding_ask_the_task_for_its_wrong_rows(problem, monkeypatch) -> None:
    from core.problem import SupervisedFewShotTask

    model = problem.make_model()
    loss_fn = problem.loss_fn(model)
    sites = problem.federation.role("test")
    methods = _methods(problem)
    methods[1] = Method("fomaml", methods[1].params, lr_by_steps={1: 3.0, 3: 3.0})  # raises the loss, finite
    fired = evaluate_sites(problem, model, methods, sites, guard=True, **GRID)
    assert fired[fired.method == "fomaml"].kept_start.any()
    # a task whose adapted rows are always fewer wrong: no finite adaptation is reverted, in either place
    start = methods[1].params
    monkeypatch.setattr(SupervisedFewShotTask, "support_errors",
                        lambda self, p: int(all(torch.equal(p[k], v) for k, v in start.items())))
    rows = evaluate_sites(problem, model, methods, sites, guard=True, **GRID)
    assert not rows.kept_start.any()
    cell = fired[(fired.method == "fomaml") & fired.kept_start].iloc[0]  # a cell the loss alone reverts
    i = [site.site_id for site in sites].index(cell.site)
    candidate = method_candidate(methods[1], GRID["inner"], problem.param_groups(model)["head"])
    task = problem.few_shot_task(model, sites[i], 2, task_generator(GRID["seed"], i, 2, int(cell.draw)))
    assert guarded_adaptation(candidate, task, loss_fn, int(cell.steps))[1] is None
