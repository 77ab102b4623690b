"""The held-out-site protocol: shots x steps x seeded draws, every method on the same draws.

Methods:

- ``local``: the same architecture from a fresh initialization, trained on the support set only;
- ``fedavg``: the FedAvg global model, no adaptation (steps = 0 rows only);
- ``fedavg+ft``: the FedAvg model fine-tuned with the same inner loop;
- each FML algorithm's meta-initialization + adaptation.
Adaptation step sizes are chosen on VALIDATION sites for every adapting method (the same search for
baselines and FML); test sites are only scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Iterable, Mapping, Optional, Sequence

import pandas as pd
import torch
from torch import nn

from core.recipes import DEFAULT_RECIPE, by_setting, recipe_trajectory
from core.choice import Candidate, SiteChoice, choose_per_steps
from core.devices import DeviceLike, to_device
from core.ensemble import ENSEMBLE, score_ensemble
from core.guard import divergence
from core.algorithms.base import InnerConfig, split_meta
from core.metrics import mean_ci95
from core.problem import FewShotTask, Problem
from core.tasks import Site
from core.types import Batch, Params

FML_BASELINES = ("local", "fedavg", "fedavg+ft")
#: The tuned baseline every method is paired against, and the anchor of the per-site choice.
BASELINE = "fedavg+ft"


@dataclass
class Method:
    """An initialization evaluated by the protocol.

    Args:
        name: table name (``local``, ``fedavg``, ``fedavg+ft`` or an algorithm).
        meta: its meta-parameters (model params, plus ``inner_lr/*`` step sizes for Meta-SGD).
        adapts: whether it is adapted (``fedavg`` is scored as is).
        lr_by_steps: adaptation step size per steps count (filled by :func:`select_adaptation`).
        trained_lr: the inner lr it was meta-trained with (added to the search grid).
        inner: its own inner-loop regularization (weight decay, proximal) if it differs from the run's.
        recipes: the adaptation recipes searched with the step size (:mod:`core.recipes`): which parameters
            adapt, and how; the validation sites choose one per steps count (``recipe_by_steps``).
    """

    name: str
    meta: Params
    adapts: bool = True
    lr_by_steps: dict[int, float] = field(default_factory=dict)
    trained_lr: Optional[float] = None
    inner: Optional[InnerConfig] = None
    recipes: tuple[str, ...] = (DEFAULT_RECIPE,)
    recipe_by_steps: dict[int, str] = field(default_factory=dict)
    best_recipe: str = DEFAULT_RECIPE
    best_steps: int = 0
    best_lr: float = 0.0
    selection_score: float = float("nan")
    validation_draws: dict[int, list[list[float]]] = field(default_factory=dict)
    """Per steps count (0 = the initialization as is), each validation site's headline per draw at the chosen
    step size, in one order for every method: what paired comparisons of methods use (sites are the units)."""

    @property
    def recipe(self) -> str:
        """The recipe at the method's best steps count."""
        return self.best_recipe

    def recipe_for(self, steps: int) -> str:
        return self.recipe_by_steps.get(steps, self.best_recipe if self.best_recipe in self.recipes else self.recipes[0])

    @property
    def params(self) -> Params:
        return split_meta(self.meta)[0]

    @property
    def lrs(self) -> Optional[Params]:
        return split_meta(self.meta)[1]

    @property
    def rate_text(self) -> str:
        """What the best adaptation's rate is: ``lr 0.03``, ``penalty 0.1`` (the Newton head's), or ``learned
        step sizes`` (Meta-SGD and its per-tensor / per-group variants, whose searched lr is unused)."""
        if self.best_recipe == "newton-head":
            return f"penalty {self.best_lr:.3g}"
        return "learned step sizes" if self.lrs is not None else f"lr {self.best_lr:.3g}"


def with_recipes(methods: Sequence[Method], recipes: Sequence[str]) -> tuple[list[Method], list[Method]]:
    """Every adapting initialization (not ``local``) searches ``recipes`` beside its own recipe on the
    validation sites, like its step size (the candidates stay one per initialization: no winner's curse over
    init x recipe); and, for the ablation table only, one row per extra recipe named ``<init>+<recipe>``
    (``fedavg+<recipe>`` for the FedAvg model) that always uses it. Applying each recipe to FedAvg too
    attributes a gain to the recipe or to the meta-learning, honestly. Returns ``(methods, ablation rows)``."""
    if not recipes:
        return list(methods), []
    out, ablation = [], []
    for m in methods:
        if not m.adapts or m.name == "local":
            out.append(m)
            continue
        out.append(replace(m, recipes=tuple(dict.fromkeys([*m.recipes, *recipes])), **_fresh()))
        base = "fedavg" if m.name == BASELINE else m.name
        ablation += [replace(m, name=f"{base}+{r}", recipes=(r,), best_recipe=r, **_fresh())
                     for r in dict.fromkeys(recipes) if (r,) != tuple(m.recipes)]
    return out, ablation


def _fresh() -> dict:
    """New containers for what the validation search fills in (a copy must never share them)."""
    return {"lr_by_steps": {}, "recipe_by_steps": {}, "validation_draws": {}}


def on_device(methods: Sequence[Method], device: DeviceLike) -> list[Method]:
    """Copies of ``methods`` with their meta-parameters on ``device`` (the evaluation model's: a task's support
    is drawn onto the model's device). What a validation search filled in is copied, never shared."""
    return [replace(m, meta=to_device(m.meta, device), lr_by_steps=dict(m.lr_by_steps),
                    recipe_by_steps=dict(m.recipe_by_steps), validation_draws=dict(m.validation_draws))
            for m in methods]


def trained_name(method: str) -> str:
    """The meta-trained model a method row starts from (``fedavg+ft``, ``fomaml+head`` -> ``fedavg``, ``fomaml``)."""
    return method.split("+", 1)[0]


def task_generator(seed: int, site_index: int, shots: int, draw: int) -> torch.Generator:
    """Draw seeds depend only on (seed, site, shots, draw): every method sees the same support."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + site_index) * 1_009 + shots) * 10_007 + draw)


def adapt_along(
    loss_fn, method: Method, support: Batch, steps_grid: Sequence[int], lr: float, inner: InnerConfig,
    head: Sequence[str] = (), recipe: Optional[str] = None,
) -> dict[int, Params]:
    """Adapted parameters after each steps count of ``steps_grid`` under ``recipe`` (default: the method's at
    the largest steps count; ``head``: the problem's head parameter group)."""
    return recipe_trajectory(recipe or method.recipe_for(max(steps_grid, default=0)), loss_fn, method.params,
                             support, steps_grid, lr, head=head, lrs=method.lrs, **(method.inner or inner).adapt_kwargs())


def _adapted(loss_fn, method: Method, task: FewShotTask, steps_grid: Sequence[int], inner: InnerConfig,
             lr_for: Callable[[int], float], head: Sequence[str] = ()) -> dict[int, Params]:
    """``method``'s parameters after each steps count on ``task``'s support (steps 0 only: ``fedavg``)."""
    if not method.adapts:
        return {0: method.params}
    support = task.support(method.params)
    out: dict[int, Params] = {}
    with torch.enable_grad():
        for (lr, recipe), steps in by_setting(steps_grid, lr_for, method.recipe_for).items():
            out.update(adapt_along(loss_fn, method, support, steps, lr, inner, head, recipe))
    return out


def _guarded(loss_fn, method: Method, task: FewShotTask, adapted: dict[int, Params], inner: InnerConfig,
             ) -> tuple[dict[int, Params], set[int]]:
    """``adapted`` with the start, unadapted, at every steps count whose adaptation diverged on the support
    (:func:`core.guard.divergence`, as ``fml onboard`` keeps it), and those steps counts."""
    # a policy's support is its own rollouts: not drawn again (it would move the task's random stream)
    support = task.support(method.params) if task.support_loss_falls else ()
    kwargs = (method.inner or inner).adapt_kwargs()
    kept = {s for s, p in adapted.items() if s > 0 and divergence(
        loss_fn, method.params, p, support, loss_should_fall=task.support_loss_falls, adapt_kwargs=kwargs,
        support_errors=task.support_errors)}
    return {s: method.params if s in kept else p for s, p in adapted.items()}, kept


def _score_method(loss_fn, method: Method, task: FewShotTask, steps_grid: Sequence[int], inner: InnerConfig,
                  lr_for: Callable[[int], float], head: Sequence[str] = ()) -> dict[int, dict[str, float]]:
    return {s: task.score(p) for s, p in _adapted(loss_fn, method, task, steps_grid, inner, lr_for, head).items()}



def select_adaptation(
    problem: Problem,
    model: nn.Module,
    methods: Iterable[Method],
    sites: Sequence[Site],
    *,
    shots: int,
    steps_grid: Sequence[int],
    lr_grid: Sequence[float],
    draws: int,
    seed: int,
    inner: InnerConfig,
) -> pd.DataFrame:
    """Choose each adapting method's step size per steps count, and its best (steps, lr), on validation sites."""
    loss_fn = problem.loss_fn(model)
    head = problem.param_groups(model)["head"]
    sign = 1.0 if problem.higher_is_better else -1.0
    records = []
    positive_steps = [s for s in steps_grid if s > 0]
    for method in methods:
        if not method.adapts or not positive_steps:
            continue
        grid = sorted(set(lr_grid) | ({method.trained_lr} if method.trained_lr else set()))
        if method.lrs is not None:  # Meta-SGD adapts with its learned step sizes
            grid = [method.trained_lr or lr_grid[0]]
        totals: dict[tuple[int, str, float], list[float]] = {}
        unadapted: list[float] = []
        for i, site in enumerate(sites):
            for d in range(draws):
                task = problem.few_shot_task(model, site, shots, task_generator(seed + 17, i, shots, d))
                support = task.support(method.params)
                unadapted.append(task.score(method.params)[problem.headline])
                for recipe in method.recipes:
                    for lr in grid:
                        with torch.enable_grad():
                            traj = adapt_along(loss_fn, method, support, positive_steps, lr, inner, head, recipe)
                        for s, p in traj.items():
                            totals.setdefault((s, recipe, lr), []).append(task.score(p)[problem.headline])
        means = {key: sum(v) / len(v) for key, v in totals.items()}
        for s in positive_steps:
            _, recipe, lr = max((key for key in means if key[0] == s), key=lambda key: sign * means[key])
            method.recipe_by_steps[s], method.lr_by_steps[s] = recipe, lr
        best = max(means, key=lambda key: sign * means[key])
        method.best_steps, method.best_recipe, method.best_lr = best
        method.selection_score = means[best]
        chosen = {s: totals[(s, method.recipe_by_steps[s], method.lr_by_steps[s])] for s in positive_steps}
        method.validation_draws = {s: by_site(v, draws) for s, v in {0: unadapted, **chosen}.items()}
        records += [{"method": method.name, "recipe": r, "steps": s, "lr": lr, "val_" + problem.headline: m,
                     "chosen": (method.recipe_by_steps.get(s), method.lr_by_steps.get(s)) == (r, lr)}
                    for (s, r, lr), m in sorted(means.items())]
    return pd.DataFrame.from_records(records)


def validation_at_shots(
    problem: Problem,
    model: nn.Module,
    methods: Sequence[Method],
    sites: Sequence[Site],
    *,
    shots: int,
    steps_grid: Sequence[int],
    draws: int,
    seed: int,
    inner: InnerConfig,
    max_folds: int,
) -> Optional[dict[str, dict[int, list[list[float]]]]]:
    """Each method's headline per validation site and draw at ``shots`` per steps count, adapted with
    the step size and recipe :func:`select_adaptation` chose: whether validation supports of the size where a
    site falls back to the default (it cannot be split) would choose that default too. None when every
    validation support at ``shots`` splits (no site of that size falls back). Same draws as the selection's."""
    loss_fn = problem.loss_fn(model)
    head = problem.param_groups(model)["head"]
    keys = [(i, d) for i in range(len(sites)) for d in range(draws)]

    def task(i: int, d: int) -> FewShotTask:
        return problem.few_shot_task(model, sites[i], shots, task_generator(seed + 17, i, shots, d))

    if all(task(i, d).support_folds(max_folds) is not None for i, d in keys):
        return None
    out: dict[str, dict[int, list[float]]] = {m.name: {} for m in methods}
    for i, d in keys:
        t = task(i, d)
        for m in methods:
            for s, metrics in _score_method(loss_fn, m, t, steps_grid, inner, _lr_for(m), head).items():
                out[m.name].setdefault(s, []).append(metrics[problem.headline])
    return {name: {s: by_site(v, draws) for s, v in by_steps.items()} for name, by_steps in out.items()}


def by_site(values: list[float], draws: int) -> list[list[float]]:
    """Site-major ``values`` (each site's ``draws`` in a run) as one list per site."""
    return [values[i:i + draws] for i in range(0, len(values), draws)]


@dataclass(frozen=True)
class AutoChoice:
    """The ``auto`` row of the protocol: on each draw, the onboarding choice among ``candidates`` (method
    names) by cross-validation on that draw's support set only (:mod:`core.choice`): the baseline is kept
    unless another candidate is clearly better; the default at a steps count (``default_by_steps``, else
    ``default``) when the support cannot be split."""

    candidates: tuple[str, ...]
    default: str
    max_folds: int = 5
    default_by_steps: Mapping[int, str] = field(default_factory=dict)
    """The default at a steps count, when it differs from ``default`` (see ``pipelines.registration_choice.validation_default``)."""
    adapted_trials: Mapping[int, Collection[int]] = field(default_factory=dict)
    """Shots -> the steps counts at which a site whose support the policy produces tries the starts ADAPTED on
    rollouts of their own (:func:`core.choice.choose_by_adapted_trials`) instead of adapting the default on every
    rollout (:func:`adapted_trial_steps` decides where, on validation sites)."""

    def trying_everywhere(self, shots_grid: Sequence[int], steps_grid: Sequence[int]) -> "AutoChoice":
        """This choice with the starts tried adapted at every shots count and every adapting steps count."""
        return replace(self, adapted_trials={k: tuple(s for s in steps_grid if s > 0) for k in shots_grid})


def method_candidate(method: Method, inner: InnerConfig, head: Sequence[str] = ()) -> Candidate:
    """``method`` as a starting point of the per-site choice, with its recipe and validation-chosen step sizes."""
    return Candidate(method.name, method.params, _lr_for(method), method.lrs, (method.inner or inner).adapt_kwargs(),
                     method.recipe_for, tuple(head))


def _lr_for(method: Method) -> Callable[[int], float]:
    return lambda s: method.lr_by_steps.get(s, method.best_lr or method.trained_lr or 0.0)


def evaluate_sites(
    problem: Problem,
    model: nn.Module,
    methods: Sequence[Method],
    sites: Sequence[Site],
    *,
    shots_grid: Sequence[int],
    steps_grid: Sequence[int],
    draws: int,
    seed: int,
    inner: InnerConfig,
    progress: Optional[Callable[[], None]] = None,
    ensemble: Sequence[str] = (),
    guard: bool = False,
) -> pd.DataFrame:
    """Long table of every score: columns site, method, shots, steps, draw, metric, value, kept_start. ``ensemble``:
    the methods (the registered bundle's candidates) whose adapted outputs the row ``ensemble`` averages
    (:mod:`core.ensemble`), each adapted exactly as its own row; no such row where the task cannot average.
    ``guard``: score a method's start, unadapted, where its adaptation diverged on the support (``kept_start``
    True), as ``fml onboard`` does (:mod:`core.guard`; the ensemble averages the guarded members)."""
    loss_fn = problem.loss_fn(model)
    head = problem.param_groups(model)["head"]
    records = []
    for i, site in enumerate(sites):
        for k in shots_grid:
            for d in range(draws):
                task = problem.few_shot_task(model, site, k, task_generator(seed, i, k, d))
                adapted, kept = {}, {}
                for method in methods:
                    adapted[method.name] = _adapted(loss_fn, method, task, steps_grid, inner, _lr_for(method), head)
                    kept[method.name] = set()
                    if guard and method.adapts:
                        adapted[method.name], kept[method.name] = _guarded(loss_fn, method, task,
                                                                           adapted[method.name], inner)
                    records += _records(site.site_id, method.name, k, d,
                                        {s: task.score(p) for s, p in adapted[method.name].items()}, kept[method.name])
                records += _records(site.site_id, ENSEMBLE, k, d, _ensemble_scores(task, [adapted[m] for m in ensemble]),
                                    set().union(*(kept[m] for m in ensemble)))
                if progress is not None:
                    progress()
    return pd.DataFrame.from_records(records)


def _ensemble_scores(task: FewShotTask, members: Sequence[dict[int, Params]]) -> dict[int, dict[str, float]]:
    """The ensemble's scores at every steps count all ``members`` were adapted to (none: nothing to average)."""
    if len(members) < 2:
        return {}
    out = {}
    for s in sorted(set.intersection(*(set(m) for m in members))):
        scores = score_ensemble(task, [m[s] for m in members])
        if scores is None:
            return {}
        out[s] = scores
    return out


def evaluate_auto(
    problem: Problem,
    model: nn.Module,
    methods: Sequence[Method],
    sites: Sequence[Site],
    rows: pd.DataFrame,
    auto: AutoChoice,
    *,
    shots_grid: Sequence[int],
    steps_grid: Sequence[int],
    draws: int,
    seed: int,
    inner: InnerConfig,
    on_choice: Optional[Callable[[Site, int, int, Mapping[int, SiteChoice]], None]] = None,
) -> pd.DataFrame:
    """The ``auto`` rows of the draws of :func:`evaluate_sites` (same seed and grids): on each draw the
    choice sees ONLY that draw's support folds; ``rows`` (the scores) are read afterwards, to copy the
    chosen candidate's metrics. Column ``choice`` names the candidate, ``cv_folds`` the folds its support split
    into (0: it could not be split and got the default, unless ``trials`` > 0: the episodes each start ran on
    the site, unadapted, at 0 steps of a task whose support the policy produces). ``on_choice(site, shots, draw,
    choices by steps)`` sees every draw's choices with their evidence (``benchmarks/choice_rules.py``)."""
    loss_fn = problem.loss_fn(model)
    by_name = {m.name: m for m in methods}
    head = problem.param_groups(model)["head"]
    candidates = [method_candidate(by_name[c], inner, head) for c in auto.candidates]
    defaults = {s: auto.default_by_steps.get(s, auto.default) for s in steps_grid}
    scored = rows.set_index(["site", "method", "shots", "steps", "draw"]).sort_index()  # sorted: fast, no lexsort warning
    records = []
    for i, site in enumerate(sites):
        for k in shots_grid:
            for d in range(draws):
                task = problem.few_shot_task(model, site, k, task_generator(seed, i, k, d))
                choices = choose_per_steps(loss_fn, candidates, task.support_folds(auto.max_folds), defaults,
                                           task.choice_criterion(loss_fn), BASELINE, task.episode_trials(), k,
                                           problem.higher_is_better, task.episode_support(),
                                           auto.adapted_trials.get(k, ()))
                if on_choice is not None:
                    on_choice(site, k, d, choices)
                for s, choice in choices.items():
                    if choice.adapted is not None:  # the choice adapted the site's model itself: scored as it is
                        metrics = task.score(choice.adapted)
                        chosen = {"metric": list(metrics), "value": list(metrics.values()),
                                  "kept_start": [choice.kept_start] * len(metrics)}
                    else:
                        chosen = scored.loc[(site.site_id, choice.name, k, s, d)]
                    kept = chosen["kept_start"] if "kept_start" in chosen else [None] * len(chosen)
                    records += [{"site": site.site_id, "method": "auto", "shots": k, "steps": s, "draw": d,
                                 "metric": m, "value": float(v), "kept_start": g, "choice": choice.name,
                                 "cv_folds": choice.folds, "trials": choice.trials}
                                for m, v, g in zip(chosen["metric"], chosen["value"], kept)]
    return pd.DataFrame.from_records(records)


DEFAULT_MEAN, TRIED_MEAN = "mean_adapting_the_default", "mean_trying_the_starts_adapted"  # its table's two rules


def adapted_trial_steps(
    problem: Problem,
    model: nn.Module,
    methods: Sequence[Method],
    sites: Sequence[Site],
    auto: AutoChoice,
    *,
    shots_grid: Sequence[int],
    steps_grid: Sequence[int],
    draws: int,
    seed: int,
    inner: InnerConfig,
    guard: bool = False,
) -> tuple[dict[int, tuple[int, ...]], pd.DataFrame]:
    """Where a site whose support the policy produces should try the starts adapted (shots -> steps counts), decided
    on validation ``sites`` as the step sizes are (the better mean headline): the ``auto`` row as it is (the default
    adapted on every rollout) against the same with :func:`core.choice.choose_by_adapted_trials`, on the selection's
    draws (``seed + 17``); and the table of both means per (shots, steps), with ``chosen`` where the second wins.
    Nothing to decide (``{}``, no rows) for labelled supports."""
    probe = problem.few_shot_task(model, sites[0], shots_grid[0], task_generator(seed + 17, 0, shots_grid[0], 0))
    positive = [s for s in steps_grid if s > 0]
    if probe.episode_support() is None or not positive or len(auto.candidates) < 2:
        return {}, pd.DataFrame()
    grid = dict(shots_grid=shots_grid, steps_grid=positive, draws=draws, seed=seed + 17, inner=inner)
    bundle = [m for m in methods if m.name in auto.candidates]
    rows = evaluate_sites(problem, model, bundle, sites, guard=guard, **grid)
    everywhere = auto.trying_everywhere(shots_grid, positive)
    means = {}
    for label, rule in ((DEFAULT_MEAN, auto), (TRIED_MEAN, everywhere)):
        got = evaluate_auto(problem, model, bundle, sites, rows, rule, **grid)
        got = got[got["metric"] == problem.headline]
        means[label] = got.groupby(["shots", "steps"])["value"].mean()
    table = pd.DataFrame(means).reset_index()
    table.insert(2, "metric", problem.headline)
    sign = 1.0 if problem.higher_is_better else -1.0
    table["chosen"] = sign * table[TRIED_MEAN] > sign * table[DEFAULT_MEAN]
    chosen = {int(k): tuple(int(s) for s in grp.loc[grp["chosen"], "steps"]) for k, grp in table.groupby("shots")}
    return {k: v for k, v in chosen.items() if v}, table


def _records(site: str, method: str, shots: int, draw: int, scores: dict[int, dict[str, float]],
             kept: set[int] = frozenset()) -> list[dict]:
    return [{"site": site, "method": method, "shots": shots, "steps": s, "draw": draw, "metric": name,
             "value": float(v), "kept_start": s in kept} for s, metrics in scores.items() for name, v in metrics.items()]


def kept_start_counts(rows: pd.DataFrame) -> dict[str, list[int]]:
    """Per method, ``[kept, adapted]``: of its adapted (seed, site, shots, steps, draw) cells, how many the
    protocol's divergence guard scored unadapted (``guard=True``: what ``fml onboard`` would have kept); the
    ``ensemble``'s counts a cell where any member was kept. Empty for rows scored without the guard column."""
    if "kept_start" not in rows:
        return {}
    keys = [k for k in ("seed", "method", "site", "shots", "steps", "draw") if k in rows]
    cells = rows[(rows["steps"] > 0) & rows["kept_start"].notna()].drop_duplicates(keys)
    return {str(m): [int(part["kept_start"].astype(bool).sum()), len(part)] for m, part in cells.groupby("method")}


def choice_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """How often the ``auto`` row chose each candidate, per (site, shots, steps) and pooled (``ALL``)."""
    if "choice" not in rows:
        return pd.DataFrame(columns=["site", "shots", "steps", "choice", "draws"])
    picks = rows[(rows["method"] == "auto")].drop_duplicates(["site", "shots", "steps", "draw"])
    both = pd.concat([picks, picks.assign(site="ALL")])
    return both.groupby(["site", "shots", "steps", "choice"]).size().rename("draws").reset_index()


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% interval per (site, method, shots, steps, metric), plus ``site = ALL`` pooled."""
    keys = ["site", "method", "shots", "steps", "metric"]
    pooled = rows.assign(site="ALL")
    out = []
    for key, grp in pd.concat([rows, pooled]).groupby(keys, sort=False):
        m, lo, hi = mean_ci95(grp["value"].tolist())
        out.append(dict(zip(keys, key), mean=m, ci95_low=lo, ci95_high=hi, n=len(grp)))
    return pd.DataFrame.from_records(out)


def paired_differences(rows: pd.DataFrame, metric: str, baseline: str = "fedavg+ft") -> pd.DataFrame:
    """Per (site, shots, steps): mean and 95% interval of (method - baseline) over the SAME draws."""
    sub = rows[rows["metric"] == metric]
    base = sub[sub["method"] == baseline].set_index(["site", "shots", "steps", "draw"])["value"]
    out = []
    for method in sorted(set(sub["method"]) - {baseline, "fedavg", "local"} - {m for m in sub["method"] if "(" in m}):
        mine = sub[sub["method"] == method].set_index(["site", "shots", "steps", "draw"])["value"]
        diff = (mine - base).dropna().reset_index()
        if diff.empty:
            continue
        for site_value, part in [*diff.groupby("site"), ("ALL", diff)]:
            for (k, s), grp in part.groupby(["shots", "steps"]):
                m, lo, hi = mean_ci95(grp["value"].tolist())
                out.append({"site": site_value, "method": method, "baseline": baseline, "shots": k, "steps": s,
                            "metric": metric, "mean_diff": m, "ci95_low": lo, "ci95_high": hi, "n": len(grp)})
    return pd.DataFrame.from_records(out)


def validation_fn(problem: Problem, sites: Sequence[Site], *, shots: int, steps: int, lr: float, draws: int,
                  seed: int, inner: InnerConfig) -> Callable[[nn.Module, Params], dict[str, float]]:
    """Few-shot adaptation on validation sites with fixed draws (for checkpoint selection)."""

    def validate(model: nn.Module, meta: Params) -> dict[str, float]:
        method = Method("val", meta, trained_lr=lr, lr_by_steps={steps: lr})
        rows = evaluate_sites(problem, model, [method], sites, shots_grid=[shots], steps_grid=[steps],
                              draws=draws, seed=seed + 31, inner=inner)
        return rows.groupby("metric")["value"].mean().to_dict()

    return validate
