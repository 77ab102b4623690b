"""A robot tries the starts: its support budget split over the bundle's starts, each run on its own episodes --
unadapted when it will not adapt (core.choice.choose_by_trials), adapted on rollouts of its own first when it will
and validation robots did better so (core.choice.choose_by_adapted_trials); the baseline kept unless another start
is clearly better."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from core.algorithms import InnerConfig
from core.choice import (MIN_TRIALS, Candidate, choose_by_adapted_trials, choose_by_trials, choose_per_steps,
                         rank_sum_pvalue, starts_to_try)
from core.evaluation import DEFAULT_MEAN, TRIED_MEAN, AutoChoice, Method, evaluate_auto, evaluate_sites
from verticals.robotics import prepare
from verticals.robotics.config import RoboticsData
from verticals.robotics.problem import RoboticsProblem

STARTS = {"fedavg+ft": {"w": torch.zeros(1)}, "fomaml": {"w": torch.ones(1)}, "reptile": {"w": 2 * torch.ones(1)}}


def candidates(*names: str) -> list[Candidate]:
    return [Candidate(n, STARTS[n], lambda s: 0.1) for n in names]


def scripted(returns: dict[float, list[float]]):
    """``trial_scores`` of a site where a start (told apart by its weight) returns the given episodes; it records
    every call (params' weight, episodes, trial index)."""
    calls = []

    def trial_scores(params, episodes, trial):
        calls.append((float(params["w"]), episodes, trial))
        return returns[float(params["w"])][:episodes]

    trial_scores.calls = calls
    return trial_scores


def test_a_clearly_better_start_is_taken_and_an_equal_one_is_not() -> None:
    better = scripted({0.0: [-30, -32, -31, -29], 1.0: [-10, -12, -11, -9], 2.0: [-31, -28, -30, -33]})
    choice = choose_by_trials(better, candidates("fedavg+ft", "fomaml", "reptile"), 12, "fedavg+ft", True)
    assert choice.name == "fomaml" and choice.trials == 4 and choice.folds == 0
    # the budget is split evenly, each start with its own trial index (its own seeds)
    assert better.calls == [(0.0, 4, 0), (1.0, 4, 1), (2.0, 4, 2)]
    assert choice.pvalues["fomaml"] < 0.1 <= choice.pvalues["reptile"]
    assert choice.estimates["fomaml"] == pytest.approx(10.5)  # losses: the return negated
    assert "4 episodes of each of the 3 starts" in choice.reason and "clearly beats fedavg+ft" in choice.reason
    level = scripted({0.0: [-30, -10, -31, -12], 1.0: [-11, -29, -12, -30]})
    choice = choose_by_trials(level, candidates("fedavg+ft", "fomaml"), 8, "fedavg+ft", True)
    assert choice.name == "fedavg+ft" and "no start clearly beat fedavg+ft" in choice.reason


def test_too_small_a_budget_gives_no_trials() -> None:
    """Under MIN_TRIALS episodes per start a rank-sum test can never pass at p < 0.1: the default stays."""
    assert MIN_TRIALS == 3 and rank_sum_pvalue([1, 2], [5, 6]) > 0.1 and rank_sum_pvalue([1, 2, 3], [5, 6, 7]) < 0.1
    never = scripted({0.0: [0.0] * 9, 1.0: [9.0] * 9, 2.0: [9.0] * 9})
    assert choose_by_trials(never, candidates("fedavg+ft", "fomaml", "reptile"), 8, "fedavg+ft", True) is None
    assert never.calls == []  # not a single episode spent
    assert choose_by_trials(never, candidates("fedavg+ft"), 9, "fedavg+ft", True) is None  # nothing to choose


def test_direction_and_diverged_starts() -> None:
    """Lower-is-better scores pick the lowest; a start that cannot run (-inf return) is never better."""
    errors = scripted({0.0: [5, 6, 7], 1.0: [1, 2, 3]})
    assert choose_by_trials(errors, candidates("fedavg+ft", "fomaml"), 6, "fedavg+ft", False).name == "fomaml"
    assert choose_by_trials(errors, candidates("fedavg+ft", "fomaml"), 6, "fedavg+ft", True).name == "fedavg+ft"
    broken = scripted({0.0: [-30, -31, -32], 1.0: [-math.inf] * 3})
    choice = choose_by_trials(broken, candidates("fedavg+ft", "fomaml"), 6, "fedavg+ft", True)
    assert choice.name == "fedavg+ft" and choice.estimates["fomaml"] == math.inf


def test_only_the_unadapted_choice_of_an_unsplittable_support_uses_trials() -> None:
    better = scripted({0.0: [-30, -32, -31], 1.0: [-10, -12, -11]})
    defaults = {0: "fedavg+ft", 1: "fedavg+ft"}
    out = choose_per_steps(lambda p, b: torch.tensor(0.0), candidates("fedavg+ft", "fomaml"), None, defaults,
                           baseline="fedavg+ft", trials=better, budget=6, higher_is_better=True)
    assert out[0].name == "fomaml" and out[0].trials == 3
    assert out[1].name == "fedavg+ft" and out[1].trials == 0 and "cannot be split" in out[1].reason
    # no trial function (a labelled support): the default, as before
    out = choose_per_steps(lambda p, b: torch.tensor(0.0), candidates("fedavg+ft", "fomaml"), None, defaults,
                           baseline="fedavg+ft")
    assert out[0].name == "fedavg+ft" and out[0].trials == 0
    # too few episodes to try both starts: the default, and the reason says so (not only "cannot be split")
    out = choose_per_steps(lambda p, b: torch.tensor(0.0), candidates("fedavg+ft", "fomaml"), None, defaults,
                           baseline="fedavg+ft", trials=better, budget=5, higher_is_better=True)
    assert out[0].name == "fedavg+ft" and out[0].trials == 0 and "5 episodes are too few" in out[0].reason and "6 in all" in out[0].reason


def pulled_to(target: float):
    """A site where a start's return is minus its distance to ``target`` (distinct per episode, so the rank test can
    pass), its rollouts a batch whose loss pulls the weight towards ``target``; both record their calls."""
    support_calls, score_calls = [], []

    def trial_support(params, episodes, trial):
        support_calls.append((float(params["w"]), episodes, trial))
        return (torch.full((episodes, 1), target),)

    def trial_scores(params, episodes, trial):
        score_calls.append((round(float(params["w"]), 4), episodes, trial))
        return [-abs(float(params["w"]) - target) - 0.01 * i for i in range(episodes)]

    def loss(params, batch):
        return ((params["w"] - batch[0].mean()) ** 2).sum()

    return trial_support, trial_scores, loss, support_calls, score_calls


def test_a_robot_that_adapts_tries_the_adapted_starts() -> None:
    """Unadapted, fedavg+ft (w 4.5) is nearer the target 5 than fomaml (w 4); adapted one step with their own step
    sizes, fomaml lands on it: the ADAPTED trial picks fomaml, and the site's model is fomaml as it adapted there.
    Each start adapts on its share less MIN_TRIALS rollouts of its own, then runs MIN_TRIALS episodes adapted."""
    support, scores, loss, support_calls, score_calls = pulled_to(5.0)
    starts = [Candidate("fedavg+ft", {"w": torch.tensor([4.5])}, lambda s: 0.1),
              Candidate("fomaml", {"w": torch.tensor([4.0])}, lambda s: 0.5)]
    unadapted = choose_by_trials(scores, starts, 8, "fedavg+ft", True)
    assert unadapted.name == "fedavg+ft"
    score_calls.clear()
    choice = choose_by_adapted_trials(loss, scores, support, starts, 8, 1, "fedavg+ft", True)
    assert choice.name == "fomaml" and choice.trials == MIN_TRIALS and not choice.kept_start
    assert support_calls == [(4.5, 1, 0), (4.0, 1, 1)]  # 8 // 2 - 3 = 1 rollout each, its own trial index
    assert score_calls == [(4.6, 3, 0), (5.0, 3, 1)]  # then 3 episodes of each ADAPTED start
    assert float(choice.adapted["w"]) == pytest.approx(5.0)
    assert "adapted 1 step on 1 rollouts of its own" in choice.reason and "clearly beats fedavg+ft" in choice.reason
    # no rollout left to adapt on (8 // 2 < 4 would be 3 each): no adapted trial, and nothing spent
    support_calls.clear()
    assert choose_by_adapted_trials(loss, scores, support, starts, 7, 1, "fedavg+ft", True) is None and not support_calls
    # a start whose adaptation diverges runs (and is kept) unadapted
    blow_up = [starts[0], Candidate("fomaml", {"w": torch.tensor([4.0])}, lambda s: float("inf"))]
    choice = choose_by_adapted_trials(loss, scores, support, blow_up, 8, 1, "fedavg+ft", True)
    assert choice.name == "fedavg+ft"
    assert score_calls[-1] == (4.0, 3, 1)  # fomaml ran as its start


def test_choose_per_steps_tries_adapted_starts_only_where_told() -> None:
    support, scores, loss, _, _ = pulled_to(5.0)
    starts = [Candidate("fedavg+ft", {"w": torch.tensor([4.5])}, lambda s: 0.1),
              Candidate("fomaml", {"w": torch.tensor([4.0])}, lambda s: 0.5)]
    defaults = {0: "fedavg+ft", 1: "fedavg+ft", 3: "fedavg+ft"}
    out = choose_per_steps(loss, starts, None, defaults, baseline="fedavg+ft", trials=scores, budget=8,
                           higher_is_better=True, trial_support=support, adapted_trial_steps=[1])
    assert out[1].name == "fomaml" and out[1].adapted is not None and out[1].trials == MIN_TRIALS
    assert out[3].adapted is None and "cannot be split" in out[3].reason  # not told: the default, adapted later
    assert "chose not to try the starts adapted" in out[3].reason
    assert out[0].adapted is None and out[0].name == "fedavg+ft"  # unadapted trials, as before
    short = choose_per_steps(loss, starts, None, defaults, baseline="fedavg+ft", trials=scores, budget=7,
                             higher_is_better=True, trial_support=support, adapted_trial_steps=[1])
    assert short[1].adapted is None and "too few to adapt 2 starts and try each (4 each, 8 in all)" in short[1].reason


def test_too_few_rollouts_for_every_start_tries_the_baseline_and_the_validated_default() -> None:
    """Three starts need 12 rollouts to be tried adapted; with 10 the site tries fedavg+ft and the validated default
    (5 each: 2 to adapt on, 3 to run), never the third start; with 7 not even two fit, and with the default the
    baseline itself there is nothing to try against it."""
    support, scores, loss, support_calls, score_calls = pulled_to(5.0)
    starts = [Candidate("fedavg+ft", {"w": torch.tensor([4.5])}, lambda s: 0.1),
              Candidate("reptile", {"w": torch.tensor([5.0])}, lambda s: 0.0),
              Candidate("fomaml", {"w": torch.tensor([4.0])}, lambda s: 0.5)]
    assert [c.name for c in starts_to_try(starts, 12, "fedavg+ft", "fomaml")] == ["fedavg+ft", "reptile", "fomaml"]
    assert [c.name for c in starts_to_try(starts, 10, "fedavg+ft", "fomaml")] == ["fedavg+ft", "fomaml"]
    assert len(starts_to_try(starts, 7, "fedavg+ft", "fomaml")) == 3  # two do not fit: nothing narrowed
    assert len(starts_to_try(starts, 10, "fedavg+ft", "fedavg+ft")) == 3  # no challenger to try
    defaults = {1: "fomaml"}
    out = choose_per_steps(loss, starts, None, defaults, baseline="fedavg+ft", trials=scores, budget=10,
                           higher_is_better=True, trial_support=support, adapted_trial_steps=[1])
    assert out[1].name == "fomaml" and out[1].adapted is not None
    assert [t for *_, t in support_calls] == [0, 1] and all(e == 2 for _, e, _ in support_calls)
    assert {w for w, *_ in support_calls} == {4.5, 4.0}  # reptile (w 5.0), the best unadapted, never ran
    assert "only fedavg+ft and the validated default fomaml were tried" in out[1].reason
    support_calls.clear()
    same = choose_per_steps(loss, starts, None, {1: "fedavg+ft"}, baseline="fedavg+ft", trials=scores, budget=10,
                            higher_is_better=True, trial_support=support, adapted_trial_steps=[1])
    assert same[1].adapted is None and same[1].name == "fedavg+ft" and not support_calls
    assert "the validated default is fedavg+ft itself (no second start to try against it)" in same[1].reason


@pytest.fixture(scope="module")
def robots() -> RoboticsProblem:
    return prepare(RoboticsData(train_robots=6, validation_robots=2, test_robots=2, extrapolation_robots=1,
                                horizon=30, train_rollouts=4, eval_rollouts=6), seed=0)


def two_starts(robots: RoboticsProblem, shift: float):
    """A policy as ``fedavg+ft`` and the same shifted by ``shift`` as ``fomaml`` (one step size each), the test
    robots, and a grid of 3 and 6 rollouts at 0 and 1 steps, 2 draws."""
    torch.manual_seed(0)
    model = robots.make_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    other = {k: v + shift for k, v in params.items()}
    methods = [Method("fedavg+ft", params, lr_by_steps={1: 0.05}), Method("fomaml", other, lr_by_steps={1: 0.05})]
    inner = InnerConfig(steps=1, lr=0.05)
    return model, methods, robots.federation.role("test"), dict(shots_grid=[3, 6], steps_grid=[0, 1], draws=2, seed=0,
                                                                inner=inner)


def test_a_robots_trials_run_their_own_seeded_episodes(robots: RoboticsProblem) -> None:
    torch.manual_seed(0)
    model = robots.make_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    site = robots.federation.sites["test-000"]
    task = robots.few_shot_task(model, site, 6, torch.Generator().manual_seed(3))
    first, second = task.trial_scores(params, 3, 0), task.trial_scores(params, 3, 1)
    assert len(first) == 3 and first == task.trial_scores(params, 3, 0)  # seeded: the same episodes again
    assert first != second  # another start's trials are other episodes
    support = robots.rollouts(site, params, 3, task.support_seed).returns.tolist()
    assert first != support and second != support  # never the support's own episodes
    nan = {k: torch.full_like(v, float("nan")) for k, v in params.items()}
    assert task.trial_scores(nan, 3, 0) == [float("-inf")] * 3


def test_the_auto_row_at_zero_steps_is_the_trials_choice_and_reads_no_score(robots: RoboticsProblem,
                                                                           monkeypatch) -> None:
    """The held-out protocol's ``auto`` at 0 steps runs exactly the trials (the rows are read only afterwards, to
    copy the chosen start's score); adapted steps keep the default of a support that cannot be split."""
    model, methods, sites, grid = two_starts(robots, 0.01)
    good = methods[1].params
    rows = evaluate_sites(robots, model, methods, sites, **grid)
    calls = []
    task_class = type(robots.few_shot_task(model, sites[0], 3, torch.Generator()))

    def favour_fomaml(self, p, episodes, trial):
        calls.append((self.shots, episodes, trial))
        is_good = all(torch.equal(p[k], good[k]) for k in good)
        return [-1.0] * episodes if is_good else [-50.0 - i for i in range(episodes)]

    monkeypatch.setattr(task_class, "trial_scores", favour_fomaml)
    auto = evaluate_auto(robots, model, methods, sites, rows, AutoChoice(("fedavg+ft", "fomaml"), "fedavg+ft"), **grid)
    picks = auto.drop_duplicates(["site", "shots", "steps", "draw"]).set_index(["shots", "steps"])
    assert set(picks.loc[(6, 0), "choice"]) == {"fomaml"} and set(picks.loc[(6, 0), "trials"]) == {3}
    assert set(picks.loc[(3, 0), "choice"]) == {"fedavg+ft"} and set(picks.loc[(3, 0), "trials"]) == {0}  # 1 each
    assert set(picks.loc[(6, 1), "choice"]) == {"fedavg+ft"}  # adapting: the default
    assert calls and {c[0] for c in calls} == {6} and {c[2] for c in calls} == {0, 1}
    from pipelines.closing import split_draws

    assert split_draws(auto) == (0, len(sites) * 2 * 2, len(sites) * 2)  # the run's closing line counts them
    scored = rows.set_index(["site", "method", "shots", "steps", "draw", "metric"])["value"]
    for r in auto[(auto["shots"] == 6) & (auto["steps"] == 0)].itertuples():
        assert r.value == scored[(r.site, "fomaml", 6, 0, r.draw, r.metric)]


def test_the_auto_row_of_a_robot_that_tries_adapted_starts_scores_the_pick_as_it_adapted(robots: RoboticsProblem) -> None:
    """Where ``AutoChoice.adapted_trials`` says so, the ``auto`` row after s steps is the pick adapted on ITS OWN
    rollouts (the task's ``trial_support``: share less MIN_TRIALS of them), scored on the draw's episodes -- not the
    chosen method's row, which adapted on the whole support; elsewhere it is the default's row as before."""
    from core.evaluation import _lr_for, task_generator
    from core.choice import adapted_on

    model, methods, sites, grid = two_starts(robots, 0.01)
    grid = {**grid, "shots_grid": [8], "draws": 1}
    rows = evaluate_sites(robots, model, methods, sites, **grid)
    rule = AutoChoice(("fedavg+ft", "fomaml"), "fedavg+ft", adapted_trials={8: (1,)})
    auto = evaluate_auto(robots, model, methods, sites, rows, rule, **grid)
    plain = evaluate_auto(robots, model, methods, sites, rows, AutoChoice(("fedavg+ft", "fomaml"), "fedavg+ft"), **grid)
    scored = rows.set_index(["site", "method", "shots", "steps", "draw", "metric"])["value"]
    for (i, site), r in zip(enumerate(sites), auto[(auto["steps"] == 1) & (auto["metric"] == "return")].itertuples()):
        assert r.site == site.site_id and r.trials == MIN_TRIALS and r.cv_folds == 0
        task = robots.few_shot_task(model, site, 8, task_generator(0, i, 8, 0))
        j = ["fedavg+ft", "fomaml"].index(r.choice)
        own = task.trial_support(methods[j].params, 8 // 2 - MIN_TRIALS, j)
        assert own[0].shape[0] == robots.settings.horizon * 1  # one rollout of its own
        candidate = Candidate(r.choice, methods[j].params, _lr_for(methods[j]))
        adapted = adapted_on(robots.loss_fn(model), candidate, own, [1])[1]
        assert r.value == pytest.approx(task.score(adapted)["return"])
        assert r.value != scored[(site.site_id, r.choice, 8, 1, 0, "return")]  # not the row adapted on all 8
    same = ["site", "shots", "steps", "draw", "metric"]
    zero = auto[auto["steps"] == 0].merge(plain[plain["steps"] == 0], on=same)
    assert (zero["value_x"] == zero["value_y"]).all() and len(zero) > 0  # unadapted: the trials, as before
    assert set(plain.loc[plain["steps"] == 1, "trials"]) == {0}


def test_validation_decides_where_robots_try_adapted_starts(robots: RoboticsProblem) -> None:
    """``adapted_trial_steps``: per shots and steps, the better of the two ``auto`` rules on the validation robots
    (their means in the table); only shots with room for the adapted trials can switch; nothing for labelled data."""
    from core.evaluation import adapted_trial_steps

    model, methods, sites, grid = two_starts(robots, 0.01)
    val = robots.federation.role("validation")
    rule = AutoChoice(("fedavg+ft", "fomaml"), "fedavg+ft")
    chosen, table = adapted_trial_steps(robots, model, methods, val, rule, **{**grid, "shots_grid": [6, 8], "draws": 1})
    assert set(zip(table["shots"], table["steps"])) == {(6, 1), (8, 1)}
    at6 = table[table["shots"] == 6].iloc[0]
    assert at6[DEFAULT_MEAN] == at6[TRIED_MEAN] and not at6["chosen"]  # 6 // 2 - 3 = 0: cannot run
    at8 = table[table["shots"] == 8].iloc[0]
    assert at8[TRIED_MEAN] != at8[DEFAULT_MEAN]  # the rule did run: another model
    assert at8["chosen"] == (at8[TRIED_MEAN] > at8[DEFAULT_MEAN]) and at8["metric"] == "return"
    assert chosen == ({8: (1,)} if at8["chosen"] else {})


def test_the_run_says_where_robots_try_the_starts_adapted_and_where_validation_said_no() -> None:
    from pipelines.closing import adapted_trials_sentences

    (told,) = adapted_trials_sentences({"20": [1, 3]}, validated=True, starts=3)
    assert told.startswith("a site with 20 rollouts tries the 3 starts adapted") and "after 1, 3 step(s)" in told
    (pair,) = adapted_trials_sentences({"10": [1]}, validated=True, starts=3)  # 12 needed for three
    assert pair.startswith("a site with 10 rollouts tries fedavg+ft and the validated default (too few rollouts")
    (declined,) = adapted_trials_sentences({}, validated=True, starts=3)
    assert "adapts the default on every rollout" in declined and "did no better" in declined
    assert adapted_trials_sentences({}, validated=False, starts=2) == []  # labelled supports: nothing was compared


def test_onboarding_follows_the_runs_adapted_trials_at_the_nearest_shots_of_its_grid() -> None:
    from pipelines.onboard import tries_adapted

    info = {"shots": 10, "adapted_trials_by_shots": {"20": [1, 3]}, "validation_choice_by_shots": {"5": {}, "20": {}}}
    assert tries_adapted(info, 18, 1) and tries_adapted(info, 20, 3) and tries_adapted(info, 40, 1)
    assert not tries_adapted(info, 18, 5)  # not at that steps count
    assert not tries_adapted(info, 12, 1)  # nearest the registration shots (10): the default there
    assert not tries_adapted({"shots": 10}, 20, 1)  # a model from before the choice: never


@pytest.mark.slow  # a small robotics run, then three onboardings
def test_onboarding_a_robot_without_adapting_tries_the_starts(fml_home, tmp_path, capsys, monkeypatch) -> None:
    """``fml onboard robotics --steps 0``: the robot's support budget runs each registered start (the lineage
    records how many episodes each); adapting, it starts from the validated default as before -- unless the run
    recorded (``adapted_trials_by_shots``, forced here at 8 rollouts) that its robots try the starts adapted."""
    import mlflow
    from mlflow.tracking import MlflowClient

    import verticals
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.onboard import onboard
    from pipelines.run import run_pipeline

    verticals.load_all()
    spec = VERTICALS.get("robotics")
    cfg = load_preset(spec, "quick")
    cfg.data = RoboticsData(train_robots=8, validation_robots=2, test_robots=1, extrapolation_robots=1, horizon=20,
                            train_rollouts=4, eval_rollouts=4)
    cfg.fed.rounds, cfg.fed.val_every, cfg.fed.clients_per_round = 4, 2, 4
    cfg.eval.shots, cfg.eval.steps, cfg.eval.draws, cfg.eval.select_draws = [6, 8], [0, 1], 1, 1
    cfg.eval.lr_grid, cfg.eval.checkpoint_average = [0.1], 1
    cfg.output_dir = str(tmp_path / "run")
    import pipelines.run as run_module

    validated = run_module.adapted_trial_steps
    monkeypatch.setattr(run_module, "adapted_trial_steps", lambda *a, **kw: ({8: (1,)}, validated(*a, **kw)[1]))
    run_pipeline(spec, cfg, progress=False)
    assert "a site with 8 rollouts tries the 2 starts adapted" in " ".join(capsys.readouterr().out.split())
    auto = pd.read_parquet(tmp_path / "run" / "evaluation_rows.parquet").query("method == 'auto'")
    assert set(auto.loc[(auto["shots"] == 8) & (auto["steps"] == 1), "trials"]) == {MIN_TRIALS}
    assert set(auto.loc[(auto["shots"] == 6) & (auto["steps"] == 1), "trials"]) == {0}
    robot = {"robot": "goal=0.3,-0.2;gain=1.2;rotation=5"}
    still = onboard(spec, data=None, site_id="dock-7", shots=6, steps=0, overrides=robot)
    assert still.choice.trials == 3 and still.choice.folds == 0 and "episodes of each of the 2 starts" in still.choice.reason
    shown = " ".join(capsys.readouterr().out.split())  # each start's trial mean, as the robot's return
    assert "chosen on the site's own episodes" in shown and "mean return of its 3 episodes (higher is better)" in shown
    adapted = onboard(spec, data=None, site_id="dock-7", shots=6, steps=1, overrides=robot)
    assert adapted.choice.trials == 0 and "cannot be split" in adapted.choice.reason
    tried = onboard(spec, data=None, site_id="dock-7", shots=8, steps=1, overrides=robot)
    assert tried.choice.trials == MIN_TRIALS and "adapted 1 step on 1 rollouts of its own" in tried.choice.reason
    from core import tracking

    logged = tracking.load_meta_init(tried.model_uri).meta  # the site's model: the pick as it adapted on its own rollouts
    assert all(torch.allclose(logged[k], tried.choice.adapted[k].cpu()) for k in logged)
    assert any(not torch.equal(logged[k], tracking.load_meta_init("models:/fml-robotics@champion").candidates[
        tried.choice.name][k]) for k in logged)
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("fml-robotics-onboarding").experiment_id],
                                      order_by=["attributes.start_time ASC"])
    assert [r.data.tags["choice_trials"] for r in runs] == ["3", "0", "3"]


def test_the_trials_then_adapt_experiment_adapts_the_pick_on_its_own_trial_rollouts(robots: RoboticsProblem,
                                                                                    monkeypatch, tmp_path) -> None:
    """``benchmarks/robot_trials_then_adapt.py``: unadapted it is the run's ``auto``; where the rollouts are too few
    to try the starts it is the run's ``auto`` at every steps count; otherwise the pick adapted on exactly the
    rollouts its trial ran (shots = the share, the trial's seed), scored on the draw's own episodes."""
    import dataclasses
    from types import SimpleNamespace

    import pandas as pd

    import benchmarks.every_start as every_start
    from benchmarks import robot_trials_then_adapt as experiment
    from core.evaluation import _adapted, _lr_for, task_generator
    from verticals.robotics.problem import TRIAL_SEED_STRIDE

    model, methods, sites, grid = two_starts(robots, 0.05)
    inner, grid["shots_grid"] = grid["inner"], [3, 6, 8]
    rows = evaluate_sites(robots, model, methods, sites, **grid)
    auto = evaluate_auto(robots, model, methods, sites, rows, AutoChoice(("fedavg+ft", "fomaml"), "fedavg+ft"), **grid)
    run_rows = pd.concat([rows, auto], ignore_index=True)
    finished = every_start.Finished(robots, model, methods, ["fomaml"], ["fedavg+ft", "fomaml"],
                                    {0: "fedavg+ft", 1: "fedavg+ft"}, run_rows, {})
    monkeypatch.setattr(every_start, "load_finished", lambda spec, cfg, folder: finished)
    cfg = SimpleNamespace(seed=0, inner=inner, eval=SimpleNamespace(shots=[3, 6, 8], steps=[0, 1], draws=2, guard=True,
                                                                    lr_grid=[0.05, 0.5], select_draws=1))
    out, facts = experiment.seed_rows(None, cfg, tmp_path)
    assert facts["zero_step_rows_differing_from_the_run"] == 0
    keys = ["site", "shots", "steps", "draw", "metric"]
    mine = out[out["method"] == experiment.METHOD].set_index(keys)["value"].sort_index()
    every = out[out["method"] == experiment.POOLED].set_index(keys)["value"].sort_index()
    theirs = auto.set_index(keys)["value"].sort_index()
    assert every.xs(3, level="shots").equals(theirs.xs(3, level="shots"))
    assert mine.xs(0, level="steps").equals(theirs.xs(0, level="steps"))  # unadapted: the run's auto
    assert mine.xs(3, level="shots").equals(theirs.xs(3, level="shots"))  # 1 rollout each: the default, as auto
    # the step size revalidated for the 3 + 0 rollouts the lean pick adapts on, on copies (the run's untouched)
    assert set(facts["step_sizes_by_shots"]) == {"6", "8"} and methods[0].lr_by_steps == {1: 0.05}
    assert facts["step_sizes_by_shots"]["6"]["fomaml"]["1"] in {0.05, 0.5}
    assert facts["kept"]["default"] == len(sites) * 2 and sum(facts["kept"].values()) == len(sites) * 2 * 3
    # adapted trials: 6 rollouts leave none to adapt on after 3 trial episodes each (the run's auto); with 8 each
    # start adapts on 1 rollout and the score is one of the two adapted starts'
    adapted_rows = out[out["method"] == experiment.ADAPTED].set_index(keys)["value"].sort_index()
    assert adapted_rows.xs(6, level="shots").equals(theirs.xs(6, level="shots"))
    for i, site in enumerate(sites):
        for d in range(2):
            task = robots.few_shot_task(model, site, 8, task_generator(0, i, 8, d))
            scores = []
            for j, m in enumerate(methods):
                one = experiment.FixedSupport(robots.rollout_batch(site, 1, task.support_seed + TRIAL_SEED_STRIDE * (4 + j),
                                                                   m.params))
                scores.append(task.score(_adapted(robots.loss_fn(model), m, one, [1], inner, _lr_for(m),
                                                  robots.param_groups(model)["head"])[1])["return"])
            assert adapted_rows[(site.site_id, 8, 1, d, "return")] in scores
    picks = auto[(auto["shots"] == 6) & (auto["steps"] == 0)].drop_duplicates(["site", "draw"])
    by_name = {m.name: m for m in methods}
    for r in picks.itertuples():  # after one step: the pick adapted on its own 3 trial rollouts
        i = [s.site_id for s in sites].index(r.site)
        task = robots.few_shot_task(model, sites[i], 6, task_generator(0, i, 6, r.draw))
        own = dataclasses.replace(task, shots=3, support_seed=task.support_seed + TRIAL_SEED_STRIDE * (
            ["fedavg+ft", "fomaml"].index(r.choice) + 1))
        method = by_name[r.choice]
        adapted = _adapted(robots.loss_fn(model), method, own, [0, 1], inner, _lr_for(method),
                           robots.param_groups(model)["head"])[1]
        assert mine[(r.site, 6, 1, r.draw, "return")] == task.score(adapted)["return"]
        # trials-adapt-all: the same pick adapted on every start's trial rollouts (6 in all)
        batches = [robots.rollout_batch(sites[i], 3, task.support_seed + TRIAL_SEED_STRIDE * (j + 1), m.params)
                   for j, m in enumerate(methods)]
        assert batches[0][0].shape[0] * 2 == sum(b[0].shape[0] for b in batches)
        pooled = experiment.FixedSupport(tuple(torch.cat(parts) for parts in zip(*batches)))
        on_all = _adapted(robots.loss_fn(model), method, pooled, [0, 1], inner, _lr_for(method),
                          robots.param_groups(model)["head"])[1]
        assert every[(r.site, 6, 1, r.draw, "return")] == task.score(on_all)["return"]
        assert any(not torch.equal(on_all[n], adapted[n]) for n in adapted)  # the other start's episodes moved it


def test_the_tried_everywhere_experiment_scores_the_adapted_trials_the_run_did_not_choose(robots: RoboticsProblem,
                                                                                        monkeypatch, tmp_path) -> None:
    """``benchmarks/robot_tried_everywhere.py``: the run's rule re-derives its own ``auto`` rows (else it stops);
    ``auto-tried`` tries the starts adapted wherever the budget allows (8 rollouts, two starts: 4 each), and is the
    run's ``auto`` where it cannot (6 rollouts) and unadapted."""
    from types import SimpleNamespace

    import pandas as pd

    import benchmarks.every_start as every_start
    from benchmarks import robot_tried_everywhere as experiment

    model, methods, sites, grid = two_starts(robots, 0.05)
    inner, grid["shots_grid"] = grid["inner"], [6, 8]
    rows = evaluate_sites(robots, model, methods, sites, **grid)
    auto = evaluate_auto(robots, model, methods, sites, rows, AutoChoice(("fedavg+ft", "fomaml"), "fedavg+ft"), **grid)
    finished = every_start.Finished(robots, model, methods, ["fomaml"], ["fedavg+ft", "fomaml"],
                                    {0: "fedavg+ft", 1: "fedavg+ft"}, pd.concat([rows, auto], ignore_index=True), {})
    monkeypatch.setattr(every_start, "load_finished", lambda spec, cfg, folder: finished)
    cfg = SimpleNamespace(seed=0, inner=inner, eval=SimpleNamespace(shots=[6, 8], steps=[0, 1], draws=2, choice_folds=5))
    out, facts = experiment.seed_rows(None, cfg, tmp_path)
    assert facts["auto_rows_differing_from_the_run"] == 0 and facts["run_adapted_trials"] == {}
    keys = ["site", "shots", "steps", "draw", "metric"]
    tried = out[out["method"] == experiment.TRIED]
    theirs = auto.set_index(keys)["value"].sort_index()
    mine = tried.set_index(keys)["value"].sort_index()
    assert mine.xs(6, level="shots").equals(theirs.xs(6, level="shots"))  # 2 starts x 3 rollouts: nothing to adapt on
    assert mine.xs(0, level="steps").equals(theirs.xs(0, level="steps"))
    assert set(tried.loc[(tried["shots"] == 8) & (tried["steps"] == 1), "trials"]) == {MIN_TRIALS}
    assert sum(facts["tried_choices"]["8:1"].values()) == len(sites) * 2
    # another run's auto rows: the experiment refuses rather than pair other draws
    other = every_start.Finished(robots, model, methods, ["fomaml"], ["fedavg+ft", "fomaml"], {0: "fedavg+ft", 1: "fedavg+ft"},
                                 pd.concat([rows, auto.assign(value=auto["value"] + 1.0)], ignore_index=True), {})
    monkeypatch.setattr(every_start, "load_finished", lambda spec, cfg, folder: other)
    with pytest.raises(SystemExit, match="differs from its auto rows"):
        experiment.seed_rows(None, cfg, tmp_path)


def test_only_a_task_with_episodes_offers_trials(robots: RoboticsProblem) -> None:
    """A labelled support has no episodes to run: its ``episode_trials`` is None, so an unsplittable one keeps the
    reason of a support that cannot be split, never the robots' "too few episodes" one."""
    from core.problem import SupervisedFewShotTask

    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    labelled = SupervisedFewShotTask(torch.nn.Linear(3, 2), "bank", 1, (x, y), (x, y), lambda p, b: {})
    assert labelled.episode_trials() is None
    robot = robots.few_shot_task(robots.make_model(), robots.federation.role("test")[0], 3, torch.Generator())
    assert robot.episode_trials() == robot.trial_scores
    out = choose_per_steps(lambda p, b: torch.tensor(0.0), candidates("fedavg+ft", "fomaml"), labelled.support_folds(5),
                           {0: "fedavg+ft"}, baseline="fedavg+ft", trials=labelled.episode_trials(), budget=1)
    assert out[0].name == "fedavg+ft" and "episodes" not in out[0].reason and "cannot be split" in out[0].reason
