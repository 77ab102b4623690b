"""The per-site choice of a starting point (core/choice.py), the ``auto`` row of the held-out protocol, the
registered bundle and the choice at onboarding."""
from __future__ import annotations

import json

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from core.choice import (Candidate, choose, choose_candidate, clearly_better, fold_units, pairwise_ranking, split_support,
                         time_blocks, wrong_class_probability)
from core.config import EvalConfig, RunConfig
from core.evaluation import AutoChoice, Method, evaluate_auto, evaluate_sites, select_adaptation, validation_at_shots
from core.metrics import mse_metrics
from core.problem import SupervisedProblem
from core.seeds import site_seed
from core.tasks import EpisodeSpec, Federation, Site, SiteDataError
from core.vertical import VerticalSpec

W_TRUE = torch.tensor([[1.5], [-2.0], [0.5]])


def linear_site(site_id: str, n: int = 60) -> Site:
    gen = torch.Generator().manual_seed(site_seed(site_id))
    x = torch.randn(n, 3, generator=gen)
    return Site(site_id, x, x @ W_TRUE + 0.1 * torch.randn(n, 1, generator=gen))


def linear_problem(federation: Federation) -> SupervisedProblem:
    return SupervisedProblem(federation=federation, model_factory=lambda: nn.Linear(3, 1),
                             criterion=lambda p, y: torch.mean((p - y) ** 2), metrics=mse_metrics, headline="mse",
                             train_spec=EpisodeSpec(shots=5, query=5, by="row"), eval_by="row",
                             higher_is_better=False)


def linear_federation(validation: int = 2) -> Federation:
    roles = {"train": ["t0", "t1"], "validation": [f"v{i}" for i in range(validation)], "test": ["s0", "s1"]}
    return Federation({sid: linear_site(sid) for ids in roles.values() for sid in ids}, roles)


def init(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"weight": weight.T.clone(), "bias": torch.zeros(1)}


GOOD, BAD = init(W_TRUE), init(-3 * W_TRUE)


def per_site(*values: float) -> list[list[float]]:
    """Validation draws of as many sites, one draw each."""
    return [[v] for v in values]


# ------------------------------------------------------------------------------------------------ folds
def test_folds_are_stratified_and_never_split_a_unit():
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    folds = fold_units(torch.arange(6), y, max_folds=5)
    assert folds is not None and len(folds) == 3  # the smallest class has 3 examples: leave-one-out per class
    for train, held in folds:
        held_rows = torch.cat(held)
        assert sorted(y[held_rows].tolist()) == [0, 1]  # one of each class held out
        assert sorted(y[train].tolist()) == [0, 0, 1, 1]
    units = torch.tensor([7, 7, 7, 3, 3, 9, 9, 9])  # three engines with several windows each
    folds = fold_units(units, None, max_folds=5)
    assert folds is not None and len(folds) == 3
    for train, held in folds:
        assert len(held) == 1
        assert set(units[held[0]].tolist()).isdisjoint(units[train].tolist())


def test_a_support_too_small_to_split_falls_back_to_the_default():
    assert fold_units(torch.arange(2), torch.tensor([0, 1]), 5) is None  # 1 shot per class
    assert fold_units(torch.zeros(10, dtype=torch.long), None, 5) is None  # one unit
    site = linear_site("tiny", 4)
    support = (site.x[:1], site.y[:1])
    loss = linear_problem(linear_federation()).loss_fn(nn.Linear(3, 1))
    cands = [Candidate("fedavg+ft", BAD, lambda s: 0.1), Candidate("fomaml", GOOD, lambda s: 0.1)]
    choice = choose_candidate(loss, cands, split_support(support, None, None, 5), 1, default="fomaml")
    assert choice.name == "fomaml" and choice.folds == 0 and "cannot be split" in choice.reason


def test_too_few_units_are_cut_into_contiguous_blocks_of_their_life():
    one_engine = torch.zeros(10, dtype=torch.long)
    parts = time_blocks(one_engine)
    assert parts.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]  # 4 blocks in time order: a Wilcoxon test can pass
    two = torch.tensor([5] * 4 + [2] * 4)
    assert time_blocks(two).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # never a block across two engines
    enough = torch.tensor([0, 1, 2, 3, 3])
    assert time_blocks(enough) is enough  # 4 units: whole units, as before
    folds = fold_units(parts, None, max_folds=5)
    assert folds is not None and len(folds) == 4
    for train, held in folds:
        rows = held[0].tolist()
        assert rows == list(range(rows[0], rows[-1] + 1))  # a contiguous stretch held out
        assert set(rows).isdisjoint(train.tolist())


def test_one_unit_split_in_time_lets_the_site_overrule_a_bad_default():
    site = linear_site("one-engine", 40)
    loss = linear_problem(linear_federation()).loss_fn(nn.Linear(3, 1))
    cands = [Candidate("fedavg+ft", GOOD, lambda s: 0.05), Candidate("fomaml", BAD, lambda s: 0.05)]
    units = torch.zeros(40, dtype=torch.long)  # one unit: whole-unit folds cannot split it
    assert split_support((site.x, site.y), units, None, 5) is None
    folds = split_support((site.x, site.y), time_blocks(units), None, 5)
    choice = choose_candidate(loss, cands, folds, 2, default="fomaml")
    assert choice.name == "fedavg+ft" and choice.folds == 4


def test_a_split_support_keeps_the_baseline_unless_the_site_shows_a_clear_gain():
    """Validation sites unlike this one must not decide for it: with folds, the baseline is the anchor."""
    site = linear_site("new-site")
    loss = linear_problem(linear_federation()).loss_fn(nn.Linear(3, 1))
    folds = split_support((site.x[:8], site.y[:8]), None, None, 4)
    tie = [Candidate("fedavg+ft", GOOD, lambda s: 0.05), Candidate("fomaml", GOOD, lambda s: 0.05)]
    choice = choose_candidate(loss, tie, folds, 2, default="fomaml", baseline="fedavg+ft")
    assert choice.name == "fedavg+ft" and "no candidate clearly beat fedavg+ft" in choice.reason
    assert "(training loss of each held-out unit)" in choice.reason  # what the folds measured, said where printed
    assert choose_candidate(loss, tie, None, 2, default="fomaml", baseline="fedavg+ft").name == "fomaml"  # no folds
    better = [Candidate("fedavg+ft", BAD, lambda s: 0.05), Candidate("fomaml", GOOD, lambda s: 0.05)]
    assert choose_candidate(loss, better, folds, 2, default="fedavg+ft", baseline="fedavg+ft").name == "fomaml"


def test_choose_needs_a_clear_gain_over_the_anchor():
    anchor = [1.0, 1.0, 1.0, 1.0]
    assert choose({"fedavg+ft": anchor, "fomaml": [0.5, 0.5, 0.5, 0.5]}, "fedavg+ft") == "fomaml"
    noisy = [0.0, 2.0, 0.0, 1.9]  # lower mean (0.975) but the paired difference is all noise
    assert choose({"fedavg+ft": anchor, "fomaml": noisy}, "fedavg+ft") == "fedavg+ft"
    assert choose({"fedavg+ft": anchor, "fomaml": [math.inf] * 4}, "fedavg+ft") == "fedavg+ft"
    # two pairs are never enough; a few consistent pairs are, however heavy-tailed their sizes
    assert not clearly_better([0.9, 1.0]) and not clearly_better([1.0])
    assert clearly_better([0.1, 50.0, 0.3, 2.0, 0.2]) and not clearly_better([0.1, 50.0, -0.3, -2.0, -0.2])


def test_the_ranking_criterion_ignores_a_shift_of_the_scores_and_rewards_a_better_ranking():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    held = [(x[i:i + 1], torch.tensor([y])) for i, y in enumerate([0, 0, 1, 1])]
    ranks_right = pairwise_ranking(lambda p, v: v[:, 0] * p["w"])
    right = ranks_right({"w": torch.tensor(2.0)}, held)
    shifted = pairwise_ranking(lambda p, v: v[:, 0] * p["w"] + 100.0)({"w": torch.tensor(2.0)}, held)
    wrong = ranks_right({"w": torch.tensor(-2.0)}, held)
    assert len(right) == 4 and right == pytest.approx(shifted)
    assert all(r < w for r, w in zip(right, wrong))


def test_the_wrong_class_probability_is_bounded_however_confidently_a_row_is_wrong():
    logits = lambda p, x: x * p["scale"]  # noqa: E731
    x = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 1.0, 0.0], [float("nan"), 0.0, 0.0]])
    held = [(x[i:i + 1], torch.tensor([y])) for i, y in enumerate([2, 1, 0, 0])]
    wrong = wrong_class_probability(logits)({"scale": torch.tensor(1.0)}, held)
    assert wrong[:3] == pytest.approx([1 - float(x[i].softmax(-1)[y]) for i, y in enumerate([2, 1, 0])])
    assert wrong[3] == math.inf
    confident = wrong_class_probability(logits)({"scale": torch.tensor(50.0)}, held)
    assert confident[:3] == pytest.approx([1.0, 0.0, 0.5], abs=1e-6)  # wrong costs 1 at most; a tie between two, half
    # a unit of several rows: their mean
    both = wrong_class_probability(logits)({"scale": torch.tensor(1.0)}, [(x[:2], torch.tensor([2, 1]))])
    assert both == pytest.approx([(wrong[0] + wrong[1]) / 2])


def test_a_classifier_is_chosen_by_its_right_answers_not_its_cross_entropy():
    from core.problem import SupervisedFewShotTask
    from torch.nn.functional import cross_entropy

    # rows 0-3 one-hot; candidate A right on 3 of 4 rows and confidently wrong on one, B unsure on every row
    model = nn.Linear(4, 2, bias=False)
    x, y = torch.eye(4), torch.tensor([0, 0, 1, 1])
    a = {"weight": torch.tensor([[4.0, 4.0, 0.0, 30.0], [0.0, 0.0, 4.0, 0.0]])}
    b = {"weight": torch.tensor([[0.2, -0.1, 0.0, 0.0], [0.0, 0.0, 0.1, -0.1]])}
    held = [(x[i:i + 1], y[i:i + 1]) for i in range(4)]
    task = SupervisedFewShotTask(model, "s", 2, (x, y), (x, y), metrics=lambda z, t: {})
    loss_fn = lambda p, batch: cross_entropy(torch.func.functional_call(model, p, (batch[0],)), batch[1])  # noqa: E731
    assert sum(map(loss_fn.__call__, [a] * 4, held)) > sum(map(loss_fn.__call__, [b] * 4, held))  # CE prefers B
    criterion = task.choice_criterion(loss_fn)
    assert sum(criterion(a, held)) < 1.1 < 1.9 < sum(criterion(b, held))  # A: one row wrong; B: all nearly half
    assert criterion.label == "probability of the wrong classes"
    task.stratified = False  # rows that are not classes (a regression): the loss
    assert task.choice_criterion(loss_fn)(b, held) == pytest.approx([float(loss_fn(b, u)) for u in held])


@pytest.mark.parametrize("good", ["fedavg+ft", "fomaml"])
def test_choice_picks_the_initialization_that_fits_the_site(good):
    site = linear_site("new-site")
    loss = linear_problem(linear_federation()).loss_fn(nn.Linear(3, 1))
    inits = {"fedavg+ft": GOOD if good == "fedavg+ft" else BAD, "fomaml": GOOD if good == "fomaml" else BAD}
    cands = [Candidate(name, p, lambda s: 0.05) for name, p in inits.items()]
    folds = split_support((site.x[:8], site.y[:8]), None, None, 4)
    choice = choose_candidate(loss, cands, folds, 2, default="fedavg+ft" if good == "fomaml" else "fomaml")
    assert choice.name == good and choice.folds == 4
    assert choice.estimates[good] < choice.estimates["fedavg+ft" if good == "fomaml" else "fomaml"]



def test_onboarding_judges_divergence_by_the_loss_adapting_minimizes():
    """The guard that keeps a site at its start compares the objective the recipe minimizes: weight decay shrinks
    the true weights, so the PLAIN support loss rises while adapting works as asked; a step size that overshoots
    raises the objective too, and only that is divergence."""
    from core.adapt import regularized_loss
    from pipelines.onboard import _adapt

    problem = linear_problem(linear_federation())
    model = nn.Linear(3, 1)
    loss_fn = problem.loss_fn(model)
    task = problem.few_shot_task(model, problem.federation.role("test")[0], 6, torch.Generator().manual_seed(0))
    support = task.support(GOOD)
    decay = {"weight_decay": 1.0, "proximal": 0.0}
    shrunk, diverged = _adapt(Candidate("fomaml", GOOD, lambda s: 0.05, adapt_kwargs=decay), task, loss_fn, 3)
    assert not diverged and not torch.equal(shrunk["weight"], GOOD["weight"])
    assert float(loss_fn(shrunk, support)) > float(loss_fn(GOOD, support))  # the plain loss rose ...
    objective = [float(regularized_loss(loss_fn, p, support, **decay)) for p in (GOOD, shrunk)]
    assert objective[1] < objective[0]  # ... as the objective fell
    kept, diverged = _adapt(Candidate("fomaml", GOOD, lambda s: 50.0, adapt_kwargs=decay), task, loss_fn, 3)
    assert diverged and all(torch.equal(kept[k], GOOD[k]) for k in GOOD)

# ------------------------------------------------------------------------------------- the auto row
def _methods(problem: SupervisedProblem) -> list[Method]:
    methods = [Method("fedavg+ft", GOOD, trained_lr=0.05), Method("fomaml", BAD, trained_lr=0.05)]
    select_adaptation(problem, nn.Linear(3, 1), methods, problem.federation.role("validation"), shots=6,
                      steps_grid=[0, 1, 3], lr_grid=[0.01, 0.05], draws=2, seed=0, inner=RunConfig(data=None).inner)
    return methods


def test_the_auto_choice_never_reads_the_scored_rows():
    problem = linear_problem(linear_federation())
    model, methods = nn.Linear(3, 1), _methods(problem)
    sites = problem.federation.role("test")
    grid = dict(shots_grid=[1, 6], steps_grid=[0, 1, 3], draws=3, seed=0, inner=RunConfig(data=None).inner)
    rows = evaluate_sites(problem, model, methods, sites, **grid)
    auto = AutoChoice(("fedavg+ft", "fomaml"), default="fomaml")
    picked = evaluate_auto(problem, model, methods, sites, rows, auto, **grid)
    # the auto rows are the chosen candidate's scores on the same draw
    keys = ["site", "shots", "steps", "draw", "metric"]
    scored = rows.set_index(["method", *keys])["value"]
    for _, r in picked.iterrows():
        assert r["value"] == scored[(r["choice"], *[r[k] for k in keys])]
    unadapted = picked[(picked["shots"] == 6) & (picked["steps"] == 0)]
    assert set(unadapted["choice"]) == {"fedavg+ft"}  # the good init, found from the support alone
    assert set(picked[picked["shots"] == 1]["choice"]) == {"fomaml"}  # 1 row: cannot split -> default
    # each auto row says whether its support split; the run's closing line is worded from that, not assumed
    assert set(picked[picked["shots"] == 1]["cv_folds"]) == {0} and (picked[picked["shots"] == 6]["cv_folds"] > 1).all()
    from pipelines.closing import onboarding_sentence, split_draws
    assert split_draws(picked) == (len(sites) * 3, len(sites) * 2 * 3, 0)
    assert "cross-validation on its support set where it splits (6 of 12" in onboarding_sentence(*split_draws(picked))
    unsplit = split_draws(picked[picked["shots"] == 1])
    assert unsplit == (0, 6, 0) and "no test support here could be split" in onboarding_sentence(*unsplit)
    assert "chooses" not in onboarding_sentence(*unsplit) and "`--steps 0`" not in onboarding_sentence(*unsplit)
    assert "runs each start on its own rollouts instead, when they give each start at least 3 (4 of 6 test draws" \
        in onboarding_sentence(0, 6, 4)
    # scores made to favour the bad init change no choice: the choice saw only the support
    swapped = rows.assign(value=rows["value"].where(rows["method"] != "fedavg+ft", 1e9))
    again = evaluate_auto(problem, model, methods, sites, swapped, auto, **grid)
    pd.testing.assert_series_equal(again["choice"], picked["choice"])


def test_each_draws_choice_carries_the_evidence_that_decided_it():
    """``on_choice`` sees every draw's per-unit losses; re-applying the rule to them gives the same start,
    and ``benchmarks/choice_rules.py`` records exactly those (no second cross-validation)."""
    from benchmarks.choice_rules import apply_rules, capture_auto
    from core.choice import choose

    problem = linear_problem(linear_federation())
    model, methods = nn.Linear(3, 1), _methods(problem)
    sites = problem.federation.role("test")
    grid = dict(shots_grid=[1, 6], steps_grid=[0, 1, 3], draws=3, seed=0, inner=RunConfig(data=None).inner)
    rows = evaluate_sites(problem, model, methods, sites, **grid)
    auto = AutoChoice(("fedavg+ft", "fomaml"), default="fomaml")
    seen = []
    evaluate_auto(problem, model, methods, sites, rows, auto, **grid, on_choice=lambda *a: seen.append(a))
    assert len(seen) == len(sites) * 2 * 3
    split = [c for *_, choices in seen for c in choices.values() if c.folds]
    assert split and all(c.name == choose(c.unit_losses, "fedavg+ft") for c in split)
    assert all(sum(c.fold_sizes) == len(c.unit_losses["fomaml"]) for c in split)
    assert all(not c.unit_losses for _, k, _, choices in seen if k == 1 for c in choices.values())
    records: list = []
    capture_auto(records, run_seed=7)(problem, model, methods, sites, rows, auto, **grid)
    assert len(records) == len(split) and {r["shots"] for r in records} == {6} and {r["seed"] for r in records} == {7}
    assert all(apply_rules(r["cv"], r["default"], r["fold_sizes"])["R1"] == r["auto"] for r in records)


def test_the_default_of_an_unsplittable_support_is_checked_at_its_shots():
    """One row per support cannot be cross-validated, so such a site gets the default: what validation
    supports of that size choose is measured, paired draw by draw (a shots count whose supports all split
    needs no check), and onboarding finds the check nearest its own shots."""
    from pipelines.onboard import validation_choice
    from pipelines.registration_choice import validation_default

    problem = linear_problem(linear_federation(validation=4))  # 4 sites: the fewest a clear gain needs
    model, methods = nn.Linear(3, 1), _methods(problem)
    sites = problem.federation.role("validation")
    common = dict(steps_grid=[0, 1, 3], draws=3, seed=0, inner=RunConfig(data=None).inner, max_folds=5)
    assert validation_at_shots(problem, model, methods, sites, shots=6, **common) is None  # 6 rows split
    scores = validation_at_shots(problem, model, methods, sites, shots=1, **common)
    assert set(scores) == {"fedavg+ft", "fomaml"}
    assert all([len(site) for site in v] == [3] * 4 for v in scores["fomaml"].values())  # 4 sites' 3 draws
    assert all(scores["fedavg+ft"][s] != scores["fomaml"][s] for s in (0, 1, 3))
    base, fml = methods
    assert [len(site) for site in base.validation_draws[3]] == [2] * 4  # the selection's draws, per site too
    fml.validation_draws = {s: [[v - 1e3 for v in site] for site in base.validation_draws[s]]
                            for s in base.validation_draws}
    assert validation_default(methods, 3, higher_is_better=False)[0] is fml  # the selection's draws favour it
    assert validation_default(methods, 3, higher_is_better=False, scores=scores)[0] is base  # at 1 shot: not
    info = {"shots": 6, "algorithm": "fomaml", "default_by_steps": {"3": "fomaml"},
            "validation_choice_by_shots": {"1": {"3": "fedavg+ft"}}}
    assert validation_choice(info, 1, 3) == (1, "fedavg+ft") and validation_choice(info, 2, 3) == (1, "fedavg+ft")
    assert validation_choice(info, 5, 3) == (6, "fomaml") and validation_choice(info, 20, 3) == (6, "fomaml")
    assert validation_choice(info, 1, 7) is None  # no such steps count checked
    assert validation_choice({"algorithm": "fomaml"}, 1, 3) is None  # a model from before the check


# --------------------------------------------------------------- registration and onboarding of a bundle
@dataclass
class LinearData:
    rows: int = 60


def linear_spec() -> VerticalSpec:
    def load_new_site(cfg: LinearData, preprocessing: dict, site_id: Optional[str]):
        site = linear_site(site_id or "new", cfg.rows)
        return linear_problem(Federation({site.site_id: site}, {"test": [site.site_id]})), site

    return VerticalSpec(name="linear", description="test", data_config=LinearData,
                        prepare=lambda cfg, seed: linear_problem(linear_federation()),
                        load_new_site=load_new_site, presets_dir=Path("."), onboard_args="--site NEW_SITE_ID")


def test_fedavg_is_registered_and_chosen_when_it_is_the_better_start(fml_home, tmp_path, capsys, monkeypatch):
    """FedAvg constructed to be the better initialization: the run registers it as the default (and says
    so), keeps the FML init in the bundle, and onboarding picks FedAvg on the new site's own support."""
    from core import tracking
    from pipelines.onboard import onboard
    from pipelines.run import evaluate_and_register

    spec, problem = linear_spec(), linear_problem(linear_federation())
    cfg = RunConfig(data=LinearData(), eval=EvalConfig(shots=[1, 6], steps=[0, 1, 3], draws=2, select_shots=6,
                                                       lr_grid=[0.01, 0.05], select_draws=2))
    methods = [Method("local", BAD, trained_lr=0.05), Method("fedavg", GOOD, adapts=False),
               Method("fedavg+ft", GOOD, trained_lr=0.05), Method("fomaml", BAD, trained_lr=0.05)]
    tracking.setup_tracking()
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("fml-linear")) as run:
        mlflow.set_tags({"fedavg.kept_rounds": "150", "fedavg.kept_by": "validation",  # as train_one tags them
                         "fomaml.kept_rounds": "100, 150, 200", "fomaml.kept_by": "average"})
        report = evaluate_and_register(spec, problem, cfg, nn.Linear(3, 1), methods,
                                       candidates=["fedavg+ft", "fomaml"], run_id=run.info.run_id, out=tmp_path,
                                       progress=False)
    assert report.best.name == "fedavg+ft" and report.registered["alias"] == "champion"
    version = MlflowClient().get_model_version("fml-linear", report.registered["version"])
    assert version.tags["baseline_won"] == "true" and version.tags["candidates"] == "fedavg+ft,fomaml"
    assert float(version.tags["bundle_mb"]) > 0 and float(version.tags["load_seconds"]) >= 0
    card = version.description  # the model card the MLflow UI shows
    assert f"# fml-linear v{version.version}: `linear`" in card and "Default starting point: `fedavg+ft`" in card
    assert "| `auto` |" in card and "| `fomaml` |" in card and "minus `fedavg+ft`" in card
    assert "| `ensemble` |" in card and "--candidate ensemble" in card
    assert f"fml onboard linear --site NEW_SITE_ID --model models:/fml-linear/{version.version}" in card
    assert "test: s0, s1" in card
    assert "- `fedavg`: round 150, the best on the validation sites\n- `fomaml`: the mean of rounds 100, 150, 200" in card
    loaded = tracking.load_meta_init("models:/fml-linear@champion")
    assert set(loaded.candidates) == {"fedavg+ft", "fomaml"}
    assert torch.equal(loaded.candidates["fomaml"]["weight"], BAD["weight"])
    assert (tmp_path / "auto_choices.csv").stat().st_size > 0
    guard = json.loads((tmp_path / "guard_kept_start.json").read_text())  # the protocol's guard, on by default
    assert guard["guard"] is True and guard["kept_adapted"]["fedavg+ft"][1] == 2 * 2 * 2 * 2  # sites x shots x draws x steps
    assert "guard_kept_start.json" in {a.path.split("/")[-1] for a in MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert loaded.info["validation_choice_by_shots"] == {"1": {"0": "fedavg+ft", "1": "fedavg+ft", "3": "fedavg+ft"}}

    one = onboard(spec, data=None, site_id="clinic-new", shots=1)  # one row: the default, checked at 1 shot
    assert one.choice.folds == 0 and one.choice.name == "fedavg+ft"
    assert MlflowClient().get_run(one.run_id).data.tags["default_confirmed"] == "true"
    import pipelines.onboard as onboarding  # validation supports of that size chose otherwise: said and tagged

    checked = onboarding.validation_choice
    monkeypatch.setattr(onboarding, "validation_choice", lambda info, shots, steps: (1, "fomaml"))
    capsys.readouterr()
    unconfirmed = onboard(spec, data=None, site_id="clinic-new", shots=1)
    assert unconfirmed.choice.name == "fedavg+ft"  # still the default: the check informs, it does not choose
    assert MlflowClient().get_run(unconfirmed.run_id).data.tags["default_confirmed"] == "false"
    assert "validation supports of 1 shots chose fomaml (`--candidate fomaml`" in capsys.readouterr().out
    monkeypatch.setattr(onboarding, "validation_choice", checked)
    result = onboard(spec, data=None, site_id="clinic-new", shots=6)
    assert result.choice.name == "fedavg+ft" and result.choice.folds >= 2
    assert result.choice.estimates["fedavg+ft"] < result.choice.estimates["fomaml"]
    lineage = MlflowClient().get_run(result.run_id).data.tags
    assert lineage["candidate"] == "fedavg+ft" and "fomaml" in lineage["cv_losses"]
    from core.choice import gain_pvalue

    # the evidence's strength is kept: fomaml's p-value against the anchor, from the same paired unit losses
    units = result.choice.unit_losses
    expected = gain_pvalue([b - a for a, b in zip(units["fomaml"], units["fedavg+ft"])])
    assert json.loads(lineage["cv_pvalues"]) == {"fomaml": round(expected, 4)} and expected >= 0.1
    assert "p (beats the anchor)" in capsys.readouterr().out
    assert lineage["adaptation_helped"] == "true"
    # a step size that overshoots RAISES the support loss (finite weights): the site keeps its start, and is told
    overshoot = onboard(spec, data=None, site_id="clinic-new", shots=6, lr=50.0)
    assert overshoot.after == overshoot.before
    tags = MlflowClient().get_run(overshoot.run_id).data.tags
    assert tags["adaptation_diverged"] == "true" and tags["adapt_steps"] == "0"
    assert "raised its support loss" in " ".join(capsys.readouterr().out.split())
    # fitting six noisy rows from the true weights lowers the support loss but makes the other rows worse:
    # recorded, and said (not hidden)
    overfit = onboard(spec, data=None, site_id="clinic-new", shots=6, lr=0.1, steps=50)
    assert overfit.after["mse"] > overfit.before["mse"]
    tags = MlflowClient().get_run(overfit.run_id).data.tags
    assert tags["adaptation_helped"] == "false" and tags["adaptation_diverged"] == "false"
    assert "adaptation made mse on this site's other labelled rows worse" in capsys.readouterr().out
    from pipelines.onboard import adaptation_helped

    assert adaptation_helped({"auroc": 0.8}, {"auroc": 0.9}, "auroc", True)
    assert adaptation_helped({"auroc": float("nan")}, {"auroc": 0.9}, "auroc", True) is None  # undefined, not worse
    forced = onboard(spec, data=None, site_id="clinic-new", shots=6, candidate="fomaml")
    assert forced.choice.name == "fomaml" and forced.after["mse"] > result.after["mse"]
    with pytest.raises(ValueError, match="its candidates are .* and 'ensemble'"):
        onboard(spec, data=None, site_id="clinic-new", shots=6, candidate="maml")
    averages = onboarding.averages_outputs  # where outputs cannot be averaged (a robot's policy), the refusal says why
    monkeypatch.setattr(onboarding, "averages_outputs", lambda task: False)
    with pytest.raises(ValueError, match="'ensemble' needs two candidates and a model scored by its outputs"):
        onboard(spec, data=None, site_id="clinic-new", shots=6, candidate="ensemble")
    monkeypatch.setattr(onboarding, "averages_outputs", averages)
    # the ensemble: both candidates adapted exactly as when forced alone, one served module averaging them
    both = onboard(spec, data=None, site_id="clinic-new", shots=6, candidate="ensemble")
    x = torch.randn(7, 3)
    ens, fed, fml = (tracking.load_meta_init(r.model_uri).model for r in (both, result, forced))
    with torch.no_grad():
        assert torch.allclose(ens(x), (fed(x) + fml(x)) / 2, atol=1e-6)
    tags = MlflowClient().get_run(both.run_id).data.tags
    assert tags["candidate"] == "ensemble" and tags["members"] == "fedavg+ft,fomaml"
    assert both.after["mse"] <= (result.after["mse"] + forced.after["mse"]) / 2  # a convex loss: Jensen
    # a site id that cannot be a name is slugged for the registry (regression: '/' failed after adapting)
    slashed = onboard(spec, data=None, site_id="clinic/7", shots=6, register=True)
    assert slashed.registered["name"] == "fml-linear-site-clinic-7"
    assert MlflowClient().get_run(slashed.run_id).data.tags["site_id"] == "clinic/7"
    with pytest.raises(SiteDataError, match="no letter or digit"):
        onboard(spec, data=None, site_id="///", shots=6)


def test_site_ids_sharing_a_prefix_get_different_seeds():
    """Regression: seeds came from the first 6 bytes, so clinic-a and clinic-b drew the same task."""
    import verticals
    from core.vertical import VERTICALS

    assert site_seed("clinic-a") != site_seed("clinic-b")
    verticals.load_all()
    for name in ("digits", "sine"):
        spec = VERTICALS.get(name)
        _, a = spec.load_new_site(spec.data_config(), {}, "clinic-a")
        _, b = spec.load_new_site(spec.data_config(), {}, "clinic-b")
        assert not torch.equal(a.y, b.y), name


def test_the_default_is_the_baseline_unless_validation_sites_show_a_clear_gain_at_those_steps():
    from pipelines.registration_choice import bundle_of, validation_default

    fml = Method("fomaml", BAD, best_steps=5, selection_score=0.9,
                 validation_draws={0: per_site(0.2, 0.3, 0.25, 0.2), 5: per_site(0.90, 0.92, 0.88, 0.91)})
    base = Method("fedavg+ft", GOOD, best_steps=5, selection_score=0.7,
                  validation_draws={0: per_site(0.6, 0.7, 0.65, 0.6), 5: per_site(0.70, 0.71, 0.69, 0.72)})
    noisy = Method("reptile", BAD, best_steps=5, selection_score=0.95,
                   validation_draws={0: per_site(*[0.1] * 4), 5: per_site(1.0, 0.45, 1.0, 0.45)})  # ahead, not clearly
    assert validation_default([fml, base], 5, higher_is_better=True)[0] is fml
    assert validation_default([fml, base], 0, higher_is_better=True)[0] is base  # unadapted, FML is worse
    chosen, why = validation_default([noisy, base], 5, higher_is_better=True)
    assert chosen is base and "not clearly" in why
    bundle, _ = bundle_of([noisy, base], ["fedavg+ft", "reptile"], higher_is_better=True)
    assert [m.name for m in bundle] == ["fedavg+ft", "reptile"]  # the default, then the best FML on validation
    bundle, _ = bundle_of([noisy, fml, base], ["fedavg+ft", "fomaml", "reptile"], higher_is_better=True)
    assert [m.name for m in bundle] == ["fomaml", "fedavg+ft", "reptile"]


def test_validation_sites_not_their_draws_are_the_units_of_the_default():
    """Four draws that all favour FML clearly pass as four sites, but not as two sites' two draws each: a claim
    about new sites needs sites, and fewer than four can never pass (the baseline stays, and says why)."""
    from pipelines.registration_choice import bundle_of, validation_default

    fml = Method("fomaml", BAD, best_steps=5, selection_score=0.9, validation_draws={5: per_site(0.90, 0.92, 0.88, 0.91)})
    base = Method("fedavg+ft", GOOD, best_steps=5, selection_score=0.7, validation_draws={5: per_site(0.70, 0.71, 0.69, 0.72)})
    assert validation_default([fml, base], 5, higher_is_better=True)[0] is fml
    fml.validation_draws, base.validation_draws = {5: [[0.90, 0.92], [0.88, 0.91]]}, {5: [[0.70, 0.71], [0.69, 0.72]]}
    chosen, why = validation_default([fml, base], 5, higher_is_better=True)  # the same draws, as 2 sites' 2 each
    assert chosen is base and "2 validation sites" in why and "4 sites are the fewest" in why
    fml.validation_draws, base.validation_draws = {5: [[0.90, 0.92, 0.88, 0.91]]}, {5: [[0.70, 0.71, 0.69, 0.72]]}
    bundle, why = bundle_of([fml, base], ["fedavg+ft", "fomaml"], higher_is_better=True)
    assert bundle[0] is base and "the 1 validation site's mean gain," in why
    # a site whose draws disagree in sign still counts once: 3 clearly better sites and 1 worse one do not pass
    mixed = Method("reptile", BAD, best_steps=5, selection_score=0.8,
                   validation_draws={5: [[0.9, 0.9], [0.9, 0.9], [0.9, 0.9], [0.55, 0.75]]})
    flat = Method("fedavg+ft", GOOD, best_steps=5, selection_score=0.7, validation_draws={5: [[0.7, 0.7]] * 4})
    assert validation_default([mixed, flat], 5, higher_is_better=True)[0] is flat
    as_draws = {5: [[v] for site in mixed.validation_draws[5] for v in site]}  # as 8 "sites": 7 of 8 ahead
    assert validation_default([replace(mixed, validation_draws=as_draws),
                               replace(flat, validation_draws={5: [[0.7]] * 8})], 5, higher_is_better=True)[0].name == "reptile"
