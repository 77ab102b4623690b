"""Which starting points a run registers, and which of them is the default a new site falls back to.

The bundle holds the tuned FedAvg baseline and the best FML algorithm; the default is the baseline unless
validation SITES show another start clearly better (a rank test over sites, so fewer than 4 can never move
it), and the run's own held-out table can veto a default it measured as worse. A new site chooses among the
bundle at onboarding (:mod:`core.choice`); these functions only decide what it chooses among and falls back to.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import pandas as pd
import torch

from core.choice import MIN_PAIRS, clearly_better
from core.config import to_plain
from core.evaluation import BASELINE, Method, validation_at_shots


def validation_default(methods: list[Method], steps: Optional[int], higher_is_better: bool,
                       scores: Optional[dict[str, dict[int, list[list[float]]]]] = None) -> tuple[Method, str]:
    """Among ``methods``: the tuned baseline (when there) unless the best method on validation sites beats it
    there clearly -- one-sided Wilcoxon signed-rank test of each validation site's mean gain over its draws,
    p < 0.1 (:func:`core.choice.clearly_better`) -- at ``steps`` adaptation steps (None: each method at its
    own best steps). Sites, not draws, are the units: the claim is about NEW sites, and one site's draws
    repeat that site (fewer than 4 sites can never pass, so the baseline stays). ``scores`` (method -> steps
    -> each site's draws, :func:`core.evaluation.validation_at_shots`) replaces the selection's draws.
    Returns it and why."""
    sign = 1 if higher_is_better else -1

    def draws(m: Method) -> list[list[float]]:
        by_steps = m.validation_draws if scores is None else scores.get(m.name, {})
        return by_steps.get(m.best_steps if steps is None else steps, [])

    def score(m: Method) -> float:
        values = [v for site in draws(m) for v in site]
        return sign * sum(values) / len(values) if values else float("-inf")

    ranked = sorted(methods, key=score, reverse=True)
    leader = ranked[0]
    baseline = next((m for m in ranked if m.name == BASELINE), None)
    if baseline is None or leader is baseline:
        return leader, "best on validation sites"
    gains = [sign * (sum(a) - sum(b)) / len(a) for a, b in zip(draws(leader), draws(baseline))]
    units = "the 1 validation site's mean gain" if len(gains) == 1 else f"the {len(gains)} validation sites' mean gains"
    test = f"one-sided Wilcoxon signed-rank test over {units}, p < 0.1"
    if clearly_better(gains):
        return leader, f"best on validation sites, clearly ahead of {BASELINE} ({test})"
    few = f"; {MIN_PAIRS} sites are the fewest that can pass" if len(gains) < MIN_PAIRS else ""
    return baseline, f"{leader.name} led on validation sites but not clearly ({test}{few}): {BASELINE} stays the default"


def choices_at_unsplittable_shots(problem: Problem, model: torch.nn.Module, bundle: list[Method], val_sites: list,
                                  cfg: Any, select_shots: int) -> dict[int, dict[int, str]]:
    """For every shots count of the grid (but the selection's) whose validation supports cannot be split, the
    start :func:`validation_default` picks per steps count on validation supports of that size -- the check of
    the default where sites of that size fall back to it (:func:`core.evaluation.validation_at_shots`)."""
    out = {}
    for k in (k for k in cfg.eval.shots if k != select_shots):
        scores = validation_at_shots(problem, model, bundle, val_sites, shots=k, steps_grid=cfg.eval.steps,
                                     draws=cfg.eval.select_draws, seed=cfg.seed, inner=cfg.inner,
                                     max_folds=cfg.eval.choice_folds)
        if scores is not None:
            out[k] = {s: validation_default(bundle, s, problem.higher_is_better, scores)[0].name
                      for s in cfg.eval.steps}
    return out


def bundle_of(methods: list[Method], candidates: list[str], higher_is_better: bool,
              size: int = 3) -> tuple[list[Method], str]:
    """The starting points a registered model carries, default first (:func:`validation_default`, each
    method at its own best steps), then the tuned baseline and the best FML algorithm, at most ``size``;
    and why that default."""
    sign = 1 if higher_is_better else -1
    ranked = sorted((m for m in methods if m.name in candidates), key=lambda m: -sign * m.selection_score)
    if not ranked:
        raise ValueError(f"none of the candidates {candidates} is among the evaluated methods")
    leader, reason = validation_default(ranked, None, higher_is_better)
    rest = [m for m in ranked if m is not leader]
    keep = [leader] + [m for m in rest if m.name == BASELINE] + [m for m in rest if m.name != BASELINE][:1]
    return keep[:size], reason


def unsplit_defaults(bundle: list[Method], steps_grid: Sequence[int], higher_is_better: bool) -> dict[int, str]:
    """The start a site gets when its support cannot be split, per steps count (at the registered steps: the
    bundle's default itself)."""
    out = {s: validation_default(bundle, s, higher_is_better)[0].name for s in steps_grid}
    out[bundle[0].best_steps] = bundle[0].name
    return out


def candidate_recipes(bundle: list[Method], inner: Any) -> dict[str, dict[str, Any]]:
    """The recipe of each bundled candidate, as saved in ``fml.json``."""
    return {m.name: {"lr_by_steps": {str(s): lr for s, lr in m.lr_by_steps.items()}, "best_steps": m.best_steps,
                     "best_lr": m.best_lr, "validation_score": m.selection_score,
                     "recipe_by_steps": {str(s): r for s, r in m.recipe_by_steps.items()}, "best_recipe": m.best_recipe,
                     "inner": to_plain(m.inner or inner)} for m in bundle}


def heldout_veto(paired: pd.DataFrame, default: Method, names: list[str], shots: int, higher_is_better: bool) -> str:
    """Why the default must give way to the baseline ('' when it need not): the run's own held-out table
    measured it as worse than ``fedavg+ft`` at the registration shots and its steps."""
    if default.name == BASELINE or BASELINE not in names or paired.empty:
        return ""
    cell = paired[(paired["site"] == "ALL") & (paired["method"] == default.name) & (paired["shots"] == shots)
                  & (paired["steps"] == default.best_steps)]
    if cell.empty:
        return ""
    diff = float(cell["mean_diff"].iloc[0])
    worse = diff < 0 if higher_is_better else diff > 0
    if not worse:
        return ""
    return (f"{default.name} led on validation sites but measured {diff:+.4f} vs {BASELINE} on the held-out sites "
            f"({shots} shots, {default.best_steps} steps): {BASELINE} is the registered default")
