"""The per-site choice of a starting point: cross-validation on a new site's OWN labelled support set.

A run hands a new site a few candidates (the best FML initialization and the FedAvg model, each with
the adaptation recipe chosen on validation sites). The site splits its k labelled examples into folds
(stratified by class; whole units such as engines never straddle folds), adapts each candidate on the
training folds with its recipe and measures a loss for every held-out unit: the training loss; for a
binary task ranked by AUROC / PR-AUC a pairwise ranking loss (a smooth 1 - AUROC that ignores a shift
of the scores, which few balanced examples would otherwise reward or punish); for a classifier of several classes
the probability its softmax leaves to the wrong classes (the cross-entropy rewards a start that is unsure everywhere
over one that is right on most rows and confidently wrong on a few). When the support splits, the
BASELINE (the tuned FedAvg model) stays the site's start unless another candidate's held-out loss is clearly
lower: a one-sided Wilcoxon signed-rank test of the paired per-unit differences at p < 0.1, so that neither
noise on a handful of examples nor validation sites unlike this one hand the site a worse start. The units of one
fold are not independent, and under the ranking loss a fold holding one example of each class gives its two
units one loss (their single pair's): with one pair per fold (k = 2 or 5 per class) the test's real level is
above 0.1 -- at k = 2 a candidate better on both folds passes, 1 time in 4 when two starts are equally good.
Testing one unit per pair instead was measured (``benchmarks/choice_rules.py``, R6) and not adopted: see
verticals/new_sites.md. Only a
support too small to split (fewer than two units of some class) falls back to the DEFAULT, the start the
validation sites support (the baseline unless an FML algorithm beat it clearly there); a robot's support, its own
rollouts, cannot be split either, but a robot that will not adapt spends it on running each start instead
(:func:`choose_by_trials`), and one that adapts may spend it on adapting each start on rollouts of its own and
running it adapted (:func:`choose_by_adapted_trials`, where the run's validation robots found that better than the
default adapted on every rollout). Units whose rows are
ordered in time (an engine's windows) are cut into contiguous blocks (:func:`time_blocks`) when there are too
few of them for the test: one engine still tells which start predicts the rest of ITS life better. Only
the support set is read: the rows a held-out protocol scores never reach these functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Mapping, Optional, Sequence

import torch
from torch import Tensor

from core.guard import divergence
from core.recipes import DEFAULT_RECIPE, by_setting, recipe_trajectory
from core.signed_rank import signed_rank_greater
from core.types import Batch, LossFn, Params

#: (training-fold batch, [one batch per held-out unit]) of each fold of one support set.
Folds = list[tuple[Batch, list[Batch]]]


@dataclass(frozen=True)
class Criterion:
    """How the choice scores a fold's held-out units: ``criterion(params, held_units) -> one loss per held-out
    unit`` (lower is better), with the ``label`` the choice's reason names it by."""

    label: str
    per_unit: Callable[[Params, list[Batch]], list[float]]

    def __call__(self, params: Params, held: list[Batch]) -> list[float]:
        return self.per_unit(params, held)


@dataclass(frozen=True)
class Candidate:
    """A starting point with its adaptation recipe.

    Args:
        name: ``fedavg+ft`` or an FML algorithm.
        params: the initialization's model parameters.
        lr_for: adaptation step size for a steps count.
        lrs: per-parameter step sizes (Meta-SGD) or None.
        adapt_kwargs: the recipe's regularization (``weight_decay``, ``proximal``).
        recipe_for: the adaptation recipe (:mod:`core.recipes`) for a steps count.
        head: the head parameter group the recipe may adapt alone.
    """

    name: str
    params: Params
    lr_for: Callable[[int], float]
    lrs: Optional[Params] = None
    adapt_kwargs: Mapping[str, float] = field(default_factory=dict)
    recipe_for: Callable[[int], str] = lambda steps: DEFAULT_RECIPE
    head: tuple[str, ...] = ()


@dataclass(frozen=True)
class SiteChoice:
    """What the choice saw and decided: ``estimates`` maps candidate -> mean held-out loss per unit (empty
    when the support could not be split, ``folds`` is 0 then); ``unit_losses`` the paired per-unit losses the
    test compared (candidate -> one loss per held-out unit, in the folds' order) and ``fold_sizes`` the number
    of held-out units of each fold, kept so that a diagnostic can re-apply other rules to the same evidence;
    ``pvalues`` each other candidate's p-value against the anchor."""

    name: str
    estimates: dict[str, float]
    folds: int
    reason: str
    unit_losses: Mapping[str, Sequence[float]] = field(default_factory=dict)
    fold_sizes: tuple[int, ...] = ()
    pvalues: Mapping[str, float] = field(default_factory=dict)
    """Candidate -> the one-sided p-value that it beats the anchor (:func:`gain_pvalue`; the anchor itself has
    none): how strong the site's evidence was, shown at onboarding and kept in the lineage."""
    trials: int = 0
    """Episodes each start was run for on the site, when the choice came from trials (:func:`choose_by_trials`,
    unadapted; :func:`choose_by_adapted_trials`, adapted; ``folds`` is 0 then); 0 otherwise."""
    adapted: Optional[Params] = None
    """The site's model when the choice itself adapted it (:func:`choose_by_adapted_trials`: the chosen start adapted
    on its own rollouts; its start where that adaptation diverged), not to be adapted again; None otherwise."""
    kept_start: bool = False
    """Whether ``adapted`` is the chosen start, unadapted, because its adaptation diverged."""


def fold_units(units: Tensor, strata: Optional[Tensor], max_folds: int) -> Optional[list[tuple[Tensor, list[Tensor]]]]:
    """Row indices ``(train, [rows of each held-out unit])`` of each fold, or None when it cannot be split.

    Args:
        units: ``[n]`` unit id of each row (a row, an engine, a patient): a unit is never split.
        strata: ``[n]`` class of each row for stratified folds (a unit's first row gives its class), or None.
        max_folds: at most this many folds; fewer when a stratum has fewer units (leave-one-out then).

    Every stratum needs at least two units, so that each training fold keeps one of each.
    """
    rows_of: dict[int, list[int]] = {}
    for row, u in enumerate(units.tolist()):
        rows_of.setdefault(u, []).append(row)
    # one copy from the device, not one per unit ([n] or [n, 1] labels)
    labels = strata.reshape(strata.shape[0], -1)[:, 0].tolist() if strata is not None else None
    by_stratum: dict[int, list[int]] = {}
    for u, rows in rows_of.items():
        by_stratum.setdefault(int(labels[rows[0]]) if labels is not None else 0, []).append(u)
    smallest = min((len(v) for v in by_stratum.values()), default=0)
    if smallest < 2 or max_folds < 2:
        return None
    n_folds = min(max_folds, smallest)
    fold_of = {u: rank % n_folds for members in by_stratum.values() for rank, u in enumerate(members)}
    folds = []
    for f in range(n_folds):
        train = [r for u, rows in rows_of.items() if fold_of[u] != f for r in rows]
        held = [torch.tensor(rows) for u, rows in rows_of.items() if fold_of[u] == f]
        folds.append((torch.tensor(sorted(train)), held))
    return folds


#: The fewest paired units a one-sided Wilcoxon signed-rank test can pass at p < 0.1 (p = 1/16 when all 4 agree).
MIN_PAIRS = 4


def time_blocks(units: Tensor, min_parts: int = MIN_PAIRS) -> Tensor:
    """``[n]`` part ids that cut each unit's rows, in their order, into contiguous blocks when there are fewer
    than ``min_parts`` units -- ``ceil(min_parts / units)`` blocks each (a unit with fewer rows: one per row);
    ``units`` itself when there are enough. Contiguous, not interleaved: neighbouring windows overlap, so an
    interleaved split would score a candidate on rows it has nearly seen."""
    ids = list(dict.fromkeys(units.tolist()))
    if len(ids) >= min_parts or not ids:
        return units
    per = math.ceil(min_parts / len(ids))
    parts = torch.empty_like(units)
    for j, u in enumerate(ids):
        rows = torch.nonzero(units == u).flatten()
        blocks = min(per, rows.numel())
        parts[rows] = j * per + torch.arange(rows.numel(), device=units.device) * blocks // rows.numel()
    return parts


def split_support(support: Batch, units: Optional[Tensor], strata: Optional[Tensor], max_folds: int) -> Optional[Folds]:
    """The folds of ``support`` (each row is a unit unless ``units`` groups rows), or None when too small."""
    idx = fold_units(units if units is not None else torch.arange(support[0].shape[0]), strata, max_folds)
    if idx is None:
        return None
    return [(tuple(t[tr] for t in support), [tuple(t[h] for t in support) for h in held]) for tr, held in idx]


def unit_loss(loss_fn: LossFn) -> Criterion:
    """The training loss of each held-out unit (non-finite counts as infinitely bad)."""

    @torch.no_grad()
    def criterion(params: Params, held: list[Batch]) -> list[float]:
        values = [float(loss_fn(params, unit)) for unit in held]
        return [v if math.isfinite(v) else math.inf for v in values]

    return Criterion("training loss", criterion)


def pairwise_ranking(scores: Callable[[Params, Tensor], Tensor]) -> Criterion:
    """For binary labels 0/1 (one row per unit): each held-out example's mean ``softplus(-margin)`` over the
    held-out examples of the other class, ``margin`` = its score minus theirs for a positive (theirs minus
    its for a negative); ``scores(params, x) -> [n]``."""

    @torch.no_grad()
    def criterion(params: Params, held: list[Batch]) -> list[float]:
        x = torch.cat([u[0] for u in held])
        y = torch.cat([u[1] for u in held]).reshape(-1).float()
        s = scores(params, x).reshape(-1).float()
        if not torch.isfinite(s).all():
            return [math.inf] * len(held)
        margin = (s[:, None] - s[None, :]) * (2 * y[:, None] - 1)  # row i against column j
        other = y[:, None] != y[None, :]
        pair = torch.nn.functional.softplus(-margin) * other
        out = pair.sum(1) / other.sum(1).clamp(min=1)
        return out.tolist()

    return Criterion("pairwise ranking loss", criterion)


def wrong_class_probability(logits: Callable[[Params, Tensor], Tensor]) -> Criterion:
    """For a classifier (``logits(params, x) -> [n, C]``, labels ``0..C-1``): the probability each held-out row's
    softmax leaves to the wrong classes (a unit of several rows: their mean). Bounded by 1, so unlike the
    cross-entropy a confidently wrong row costs no more than an unsure one: a step that fixes many confidently wrong
    rows can raise the cross-entropy while the accuracy rises (a non-finite row counts as infinitely bad)."""

    @torch.no_grad()
    def criterion(params: Params, held: list[Batch]) -> list[float]:
        x = torch.cat([u[0] for u in held])
        y = torch.cat([u[1] for u in held]).reshape(-1).long()
        z = logits(params, x).float()
        wrong = 1 - z.softmax(-1).gather(1, y[:, None]).squeeze(1)
        wrong = torch.where(torch.isfinite(z).all(1), wrong, torch.full_like(wrong, math.inf))
        return [float(part.mean()) for part in torch.split(wrong, [u[0].shape[0] for u in held])]

    return Criterion("probability of the wrong classes", criterion)


def adapted_on(loss_fn: LossFn, candidate: Candidate, train: Batch, steps_grid: Sequence[int]) -> dict[int, Params]:
    """``candidate`` adapted on one fold's training part with its recipe: its parameters after each steps
    count (one adaptation trajectory per step size, on ``loss_fn``)."""
    out: dict[int, Params] = {}
    with torch.enable_grad():
        for (lr, recipe), steps in by_setting(steps_grid, candidate.lr_for, candidate.recipe_for).items():
            out.update(recipe_trajectory(recipe, loss_fn, candidate.params, train, steps, lr, head=candidate.head,
                                         lrs=candidate.lrs, **dict(candidate.adapt_kwargs)))
    return out


def fold_losses(loss_fn: LossFn, candidates: Sequence[Candidate], folds: Folds, steps_grid: Sequence[int],
                criterion: Criterion) -> dict[str, dict[int, list[float]]]:
    """Candidate -> steps -> the held-out loss of every unit of every fold, in the folds' order (candidates are
    paired unit by unit). One fold's adapted parameters are held at a time."""
    out: dict[str, dict[int, list[float]]] = {c.name: {s: [] for s in steps_grid} for c in candidates}
    for train, held in folds:
        adapted = {c.name: adapted_on(loss_fn, c, train, steps_grid) for c in candidates}
        for s in steps_grid:
            for name, by_steps in adapted.items():
                out[name][s] += criterion(by_steps[s], held)
    return out


def gain_pvalue(gains: Sequence[float]) -> float:
    """One-sided p-value that paired ``gains`` (positive = better) are above zero, by the Wilcoxon
    signed-rank test (exact for small samples; :mod:`core.signed_rank`, SciPy's value computed fast where
    magnitudes tie); 1 unless they are positive on average. A rank test, because
    per-example losses are heavy-tailed (one badly fitted example swamps a t statistic), and a handful of
    pairs (two validation draws, two engines) can never pass it on noise: two pairs cannot reach p < 0.25."""
    values = [g for g in gains if g != 0]
    if len(values) < 2 or not all(math.isfinite(g) for g in values) or _mean(values) <= 0:
        return 1.0
    return signed_rank_greater(values)


#: How sure the site's own data must make the choice that a candidate beats the anchor (p < 1 - CONFIDENCE).
CONFIDENCE = 0.9


def clearly_better(gains: Sequence[float], confidence: float = CONFIDENCE) -> bool:
    """Whether :func:`gain_pvalue` of ``gains`` is below ``1 - confidence``."""
    return gain_pvalue(gains) < 1 - confidence


def pvalues_against(losses: Mapping[str, Sequence[float]], anchor: str) -> dict[str, float]:
    """Each other candidate's :func:`gain_pvalue` of its paired per-unit losses against ``anchor``'s."""
    base = losses[anchor]
    return {name: gain_pvalue([b - v for v, b in zip(values, base)]) for name, values in losses.items() if name != anchor}


def choose(losses: Mapping[str, Sequence[float]], anchor: str, pvalues: Optional[Mapping[str, float]] = None) -> str:
    """The candidate with the lowest mean loss among those whose paired per-unit loss is clearly below
    ``anchor``'s (p < 0.1, as :func:`clearly_better`; ``pvalues`` from :func:`pvalues_against` when already
    computed); ``anchor`` when none is."""
    p = pvalues if pvalues is not None else pvalues_against(losses, anchor)
    best, best_mean = anchor, _mean(losses[anchor])
    for name, values in losses.items():
        if name != anchor and p[name] < 1 - CONFIDENCE and _mean(values) < best_mean:
            best, best_mean = name, _mean(values)
    return best


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.inf


#: ``trial_scores(params, episodes, trial) -> the headline of each of ``episodes`` fresh episodes`` of a start run
#: unadapted on the site (a policy's returns), with the ``trial``-th start's own seeds; None when the task has no
#: episodes of its own to run (a labelled support: its folds already score every start unadapted).
TrialScores = Callable[[Params, int, int], Optional[Sequence[float]]]

#: The fewest episodes per start with which a one-sided rank-sum test can pass at p < 0.1 (3 against 3: p = 1/20;
#: 2 against 2 cannot go below 1/6).
MIN_TRIALS = 3


def rank_sum_pvalue(losses: Sequence[float], anchor_losses: Sequence[float]) -> float:
    """One-sided Mann-Whitney p-value that ``losses`` are lower than ``anchor_losses`` (unpaired: each start runs
    its own episodes; exact for small samples without ties); 1 unless their mean is lower."""
    from scipy.stats import mannwhitneyu

    if not losses or not anchor_losses or not _mean(losses) < _mean(anchor_losses):
        return 1.0
    return float(mannwhitneyu(anchor_losses, losses, alternative="greater").pvalue)


def choose_by_trials(trial_scores: TrialScores, candidates: Sequence[Candidate], budget: int, anchor: str,
                     higher_is_better: bool) -> Optional[SiteChoice]:
    """The start a site that will NOT adapt keeps, from episodes of its own: its support budget (``budget``
    episodes) split evenly over the candidates, each start run unadapted on its share, and ``anchor`` kept unless
    another start is clearly better -- a one-sided Mann-Whitney rank-sum test at p < 0.1 (:func:`rank_sum_pvalue`)
    -- taking the best mean among those that are. A policy's support is its own rollouts, so it cannot be split
    into folds; without adapting, those rollouts are free to try the starts instead. None when a share is under
    :data:`MIN_TRIALS` (the test could never pass) or the task has no episodes to run."""
    if len(candidates) < 2 or budget // len(candidates) < MIN_TRIALS:
        return None
    share = budget // len(candidates)
    sign = -1.0 if higher_is_better else 1.0
    losses: dict[str, list[float]] = {}
    for trial, c in enumerate(candidates):
        scores = trial_scores(c.params, share, trial)
        if scores is None:
            return None
        losses[c.name] = [sign * float(v) if math.isfinite(v) else math.inf for v in scores]
    pvalues = {name: rank_sum_pvalue(v, losses[anchor]) for name, v in losses.items() if name != anchor}
    name = choose(losses, anchor, pvalues)
    test = f"one-sided Mann-Whitney rank-sum test, p < {1 - CONFIDENCE:.2g}"
    verdict = f"no start clearly beat {anchor}" if name == anchor else f"clearly beats {anchor}"
    reason = (f"{share} episodes of each of the {len(candidates)} starts, unadapted, on the site (its support budget "
              f"of {budget}): {verdict} ({test})")
    return SiteChoice(name, {n: _mean(v) for n, v in losses.items()}, 0, reason, losses, (), pvalues, share)


#: ``trial_support(params, episodes, trial) -> batch``: ``episodes`` fresh rollouts of ``params`` on the site as a
#: support batch, with the ``trial``-th start's own seeds, apart from its trial episodes' (a robot's adaptation data).
TrialSupport = Callable[[Params, int, int], Batch]


def choose_by_adapted_trials(loss_fn: LossFn, trial_scores: TrialScores, trial_support: TrialSupport,
                             candidates: Sequence[Candidate], budget: int, steps: int, anchor: str,
                             higher_is_better: bool) -> Optional[SiteChoice]:
    """The start a site that WILL adapt ``steps`` steps keeps, from episodes of its own: its ``budget`` episodes split
    evenly over the candidates; each start adapts with its recipe on its share less :data:`MIN_TRIALS` rollouts of its
    own (``trial_support``), then runs :data:`MIN_TRIALS` episodes adapted; ``anchor`` kept unless another ADAPTED
    start is clearly better (:func:`choose_by_trials`' test). The choice's ``adapted`` is the chosen start as it
    adapted there (the site spends no more than ``budget`` episodes in all). Unadapted returns understate a
    meta-learned start, which is why the starts are tried adapted (``benchmarks/robot_trials_then_adapt.py``). None
    when a share leaves no rollout to adapt on."""
    if len(candidates) < 2 or not adapted_trials_fit(len(candidates), budget) or steps < 1:
        return None
    share = budget // len(candidates) - MIN_TRIALS
    adapted: dict[int, tuple[Params, bool]] = {}

    def adapted_episodes(params: Params, episodes: int, trial: int) -> Optional[Sequence[float]]:
        c = candidates[trial]
        support = trial_support(params, share, trial)
        p = {k: v.detach() for k, v in adapted_on(loss_fn, c, support, [steps])[steps].items()}
        diverged = divergence(loss_fn, params, p, support, loss_should_fall=False) is not None
        adapted[trial] = (params, True) if diverged else (p, False)
        return trial_scores(adapted[trial][0], episodes, trial)

    choice = choose_by_trials(adapted_episodes, candidates, MIN_TRIALS * len(candidates), anchor, higher_is_better)
    if choice is None:
        return None
    params, kept = adapted[[c.name for c in candidates].index(choice.name)]
    test = f"one-sided Mann-Whitney rank-sum test, p < {1 - CONFIDENCE:.2g}"
    verdict = f"no adapted start clearly beat {anchor}" if choice.name == anchor else f"clearly beats {anchor}"
    reason = (f"each of the {len(candidates)} starts adapted {steps} step{'' if steps == 1 else 's'} on {share} "
              f"rollouts of its own, then ran {MIN_TRIALS} episodes adapted (its support budget of {budget}): "
              f"{verdict} ({test})")
    return replace(choice, reason=reason, adapted=params, kept_start=kept)


def adapted_trials_fit(starts: int, budget: int) -> bool:
    """Whether ``budget`` episodes let each of ``starts`` starts adapt on at least one rollout of its own and then run
    :data:`MIN_TRIALS` episodes adapted (:func:`choose_by_adapted_trials`)."""
    return starts > 0 and budget // starts > MIN_TRIALS


def starts_to_try(candidates: Sequence[Candidate], budget: int, anchor: str, default: str) -> list[Candidate]:
    """The starts a site tries adapted with ``budget`` episodes: every one when each can adapt on a rollout and run
    :data:`MIN_TRIALS` episodes; else ``anchor`` and the validated ``default`` alone, when they differ and two fit.
    With 10 rollouts three starts cannot be tried adapted (12 needed), but the baseline and the validation robots'
    choice can (5 each), each adapting on 2 rollouts instead of 10: whether that pays is the validation robots' call
    (:func:`core.evaluation.adapted_trial_steps`), as for every start."""
    if adapted_trials_fit(len(candidates), budget) or default == anchor:
        return list(candidates)
    pair = [c for c in candidates if c.name in (anchor, default)]
    return pair if len(pair) == 2 and adapted_trials_fit(2, budget) else list(candidates)


def choose_per_steps(loss_fn: LossFn, candidates: Sequence[Candidate], folds: Optional[Folds],
                     defaults: Mapping[int, str], criterion: Optional[Criterion] = None,
                     baseline: Optional[str] = None, trials: Optional[TrialScores] = None, budget: int = 0,
                     higher_is_better: bool = True, trial_support: Optional[TrialSupport] = None,
                     adapted_trial_steps: Collection[int] = ()) -> dict[int, SiteChoice]:
    """The choice at each steps count of ``defaults`` (every candidate adapts that many steps).

    On the site's own folds, ``baseline`` (when it is a candidate; else ``defaults[s]``) is kept unless another
    candidate is clearly better by ``criterion`` (default: the held-out units' loss); ``defaults[s]`` -- the
    start validation sites support at ``s`` steps -- only when the support cannot be split. At 0 steps a task
    whose support the policy produces (``trials``, ``budget`` episodes, scores in the direction
    ``higher_is_better``) tries the starts instead (:func:`choose_by_trials`), against the same anchor; at the steps
    counts of ``adapted_trial_steps`` it tries them adapted on rollouts of their own (``trial_support``,
    :func:`choose_by_adapted_trials`), keeping the default where the budget is too small for that."""
    names = [c.name for c in candidates]
    for name in defaults.values():
        if name not in names:
            raise ValueError(f"default candidate {name!r} is not one of {names}")
    steps_grid = list(defaults)
    if folds is None or len(candidates) < 2:
        reason = ("one candidate" if len(candidates) < 2 else
                  "support cannot be split (a class with 1 example, 1 unit, or rollouts): validation-chosen default")
        out = {s: SiteChoice(defaults[s], {}, 0, reason) for s in steps_grid}
        if 0 in out and trials is not None:
            tried = choose_by_trials(trials, candidates, budget, baseline if baseline in names else defaults[0],
                                     higher_is_better)
            out[0] = tried or SiteChoice(
                defaults[0], {}, 0,
                f"support cannot be split (rollouts), and its {budget} episodes are too few to try "
                f"{len(candidates)} starts ({MIN_TRIALS} each, {MIN_TRIALS * len(candidates)} in all): validation-chosen default")
        for s in (s for s in out if s > 0 and trials is not None and trial_support):
            if s not in adapted_trial_steps:
                out[s] = SiteChoice(defaults[s], {}, 0, "support cannot be split (rollouts), and the run chose not to "
                                    "try the starts adapted at about this many rollouts (its validation robots did better "
                                    "adapting the default on every rollout): validation-chosen default")
                continue
            anchor = baseline if baseline in names else defaults[s]
            tried = starts_to_try(candidates, budget, anchor, defaults[s])
            choice = choose_by_adapted_trials(loss_fn, trials, trial_support, tried, budget, s, anchor, higher_is_better)
            if choice is not None and len(tried) < len(candidates):
                choice = replace(choice, reason=f"{choice.reason}; only {anchor} and the validated default "
                                 f"{defaults[s]} were tried ({budget} episodes are too few to adapt and try all "
                                 f"{len(candidates)} starts, {MIN_TRIALS + 1} each)")
            pair_fits = len(candidates) > 2 and adapted_trials_fit(2, budget)
            out[s] = choice or SiteChoice(
                defaults[s], {}, 0,
                f"support cannot be split (rollouts), and its {budget} episodes are too few to adapt {len(candidates)} "
                f"starts and try each ({MIN_TRIALS + 1} each, {(MIN_TRIALS + 1) * len(candidates)} in all)" +
                (f", and the validated default is {anchor} itself (no second start to try against it)"
                 if pair_fits and defaults[s] == anchor else "") + ": validation-chosen default, adapted on every rollout")
        return out
    criterion = criterion or unit_loss(loss_fn)
    losses = fold_losses(loss_fn, candidates, folds, steps_grid, criterion)
    measure = criterion.label
    out = {}
    for s in steps_grid:
        anchor = baseline if baseline in names else defaults[s]
        by_name = {name: by_steps[s] for name, by_steps in losses.items()}
        pvalues = pvalues_against(by_name, anchor)
        name = choose(by_name, anchor, pvalues)
        test = f"one-sided Wilcoxon signed-rank test, p < {1 - CONFIDENCE:.2g}"
        reason = (f"{len(folds)}-fold cross-validation on the site's support ({measure} of each held-out unit): " +
                  (f"no candidate clearly beat {anchor} ({test})" if name == anchor else f"clearly beats {anchor} ({test})"))
        out[s] = SiteChoice(name, {n: _mean(v) for n, v in by_name.items()}, len(folds), reason, by_name,
                            tuple(len(held) for _, held in folds), pvalues)
    return out


def choose_candidate(loss_fn: LossFn, candidates: Sequence[Candidate], folds: Optional[Folds], steps: int,
                     default: str, criterion: Optional[Criterion] = None, baseline: Optional[str] = None,
                     trials: Optional[TrialScores] = None, budget: int = 0,
                     higher_is_better: bool = True, trial_support: Optional[TrialSupport] = None,
                     adapted_trials: bool = False) -> SiteChoice:
    """The onboarding choice: every candidate adapts ``steps`` steps with its own step size; ``baseline`` is
    kept unless another candidate is clearly better on the folds (without folds: in the site's own trial episodes,
    ``trials`` -- unadapted at 0 steps, adapted on rollouts of their own when ``adapted_trials``), ``default`` when
    there are neither."""
    return choose_per_steps(loss_fn, candidates, folds, {steps: default}, criterion, baseline, trials, budget,
                            higher_is_better, trial_support, [steps] if adapted_trials else [])[steps]
