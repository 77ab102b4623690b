"""Which support-only signal tells a harmful adaptation? The divergence guard's evidence, cell by cell, on the
folders a finished held-out benchmark left (no retraining; a diagnostic).

`fml onboard` keeps a start unadapted when adapting it diverged on the site's own support (``core.guard``). The
signal must come from the support alone; whether the adaptation helped is known only on the scored rows. For every
adapted (test site, shots, draw, steps) cell of each bundled start, this script records the support loss before
and after adapting (the loss adapting minimizes), the support's error (:func:`support_error`: misclassified rows,
misordered positive-negative pairs for a binary ranking; none for a regression, whose loss is its error) before and
after, and the headline on the scored rows of the start and of the adaptation. It prints, for the cells where the
loss ROSE, the mean change of the headline (adapted - start, POSITIVE = adapting helped) split by whether the
support's error fell: what the guard's rule (revert on a raised loss) gives up, and what a rule that also asked for
no fewer errors would keep.

    python benchmarks/fraud_heldout.py --preset full --seeds 0 1 2 --output-dir fml-output/regenerate/fraud_full ...
    python benchmarks/guard_signals.py fraud --preset full --runs fml-output/regenerate/fraud_full --seeds 0 1 2
    # any vertical's run folders: e.g. the digits demo, one `fml run` per seed
    for n in 0 1 2; do bash .ci/fml run digits --preset quick --seed $n --output-dir R/seed$n; done
    python benchmarks/guard_signals.py digits --preset quick --runs R --seeds 0 1 2

The LAST line is JSON (``--json-out`` also writes it).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.every_start import emit_line, load_finished, rows_by_seed  # noqa: E402


def misordered_pairs(scores: Any, labels: Any) -> float:
    """1 - AUROC (scikit-learn's): the fraction of (positive, negative) pairs ranked the wrong way round, a tie
    counting half; 0.0 when a class is absent."""
    from sklearn.metrics import roc_auc_score

    y = labels.reshape(-1).cpu().numpy()
    if y.min() == y.max():
        return 0.0
    return float(1 - roc_auc_score(y, scores.reshape(-1).float().cpu().numpy()))


def support_error(task: Any, params: Any) -> Optional[float]:
    """The task's share of wrong answers on its support: misordered pairs where the headline ranks a binary task
    (AUROC, PR-AUC), misclassified rows for a classifier (the task's own count, as the guard reads it), None for a
    regression or a policy."""
    import torch
    from torch.func import functional_call

    wrong = task.support_errors(params)
    if wrong is not None:
        return wrong / task.support(params)[0].shape[0]
    x, y = task.support(params)
    with torch.no_grad():
        if hasattr(task, "logits"):  # a binary clinic: two logits rank by their difference
            z = task.logits(params, x)
            return misordered_pairs(z[:, 1] - z[:, 0], y)
        if getattr(task, "ranked", False):
            return misordered_pairs(functional_call(task.model, params, (x,)), y)
    return None


def adapted_losses(loss_fn: Any, member: Any, support: Any, steps: list[int]) -> tuple[float, dict[int, tuple[Any, float]]]:
    """``member``'s support loss (the one adapting minimizes) at its start, and per steps count its adaptation as
    onboarding runs it with that loss after."""
    import torch

    from core.adapt import regularized_loss
    from core.recipes import adapt_with_recipe

    kwargs = dict(member.adapt_kwargs)
    loss = lambda p: float(regularized_loss(loss_fn, p, support, anchor=member.params, **kwargs))  # noqa: E731
    with torch.no_grad():
        before = loss(member.params)
    out = {}
    for s in steps:
        with torch.enable_grad():
            adapted = adapt_with_recipe(member.recipe_for(s), loss_fn, member.params, support, s, member.lr_for(s),
                                        head=member.head, lrs=member.lrs, **kwargs)
        adapted = {n: v.detach() for n, v in adapted.items()}
        with torch.no_grad():
            out[s] = (adapted, loss(adapted))
    return before, out


def seed_rows(spec: Any, cfg: Any, folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per adapted cell of each bundled start: support loss and error before / after, headline of the start
    and of the adaptation on the scored rows."""
    import torch

    from core.evaluation import method_candidate, task_generator

    run = load_finished(spec, cfg, folder)
    problem, model = run.problem, run.model
    loss_fn = problem.loss_fn(model)
    head = problem.param_groups(model)["head"]
    members = [method_candidate(m, cfg.inner, head) for m in run.methods if m.name in run.bundle]
    steps = [s for s in cfg.eval.steps if s > 0]
    sign = 1.0 if problem.higher_is_better else -1.0
    out = []
    for i, site in enumerate(problem.federation.role("test")):
        for k in cfg.eval.shots:
            for d in range(cfg.eval.draws):
                task = problem.few_shot_task(model, site, k, task_generator(cfg.seed, i, k, d))
                for member in members:
                    start_score = task.score(member.params)[problem.headline]
                    error_before = support_error(task, member.params)
                    before, by_steps = adapted_losses(loss_fn, member, task.support(member.params), steps)
                    for s, (adapted, after) in by_steps.items():
                        finite = all(bool(torch.isfinite(v).all()) for v in adapted.values())
                        out.append({"site": site.site_id, "shots": k, "draw": d, "steps": s, "method": member.name,
                                    "finite": finite, "loss_before": before, "loss_after": after,
                                    "error_before": error_before,
                                    "error_after": support_error(task, adapted) if finite else None,
                                    "gain": sign * (task.score(adapted)[problem.headline] - start_score)
                                    if finite else float("nan")})
    return pd.DataFrame(out), {"bundle": run.bundle, "cells": len(out), "headline": problem.headline,
                               "validation_rises": validation_rises(problem, model, members, cfg)}


def validation_rises(problem: Any, model: Any, members: list[Any], cfg: Any) -> dict[str, dict[str, list[float]]]:
    """Per bundled start and steps count: ``[draws whose support loss rose, validation draws, largest after / before
    ratio]`` at the step size the validation sites chose (the draws that chose it): whether a rise is what that step
    size does on every site, or this site's."""
    from core.evaluation import task_generator
    from pipelines.run import selection_shots

    loss_fn = problem.loss_fn(model)
    sites = problem.federation.role("validation") or problem.federation.role("train")[:5]
    shots = selection_shots(cfg)
    steps = [s for s in cfg.eval.steps if s > 0]
    out: dict[str, dict[str, list[float]]] = {}
    for member in members:
        ratios: dict[int, list[float]] = {}
        for i, site in enumerate(sites):
            for d in range(cfg.eval.select_draws):
                task = problem.few_shot_task(model, site, shots, task_generator(cfg.seed + 17, i, shots, d))
                before, by_steps = adapted_losses(loss_fn, member, task.support(member.params), steps)
                for s, (_, after) in by_steps.items():
                    ratios.setdefault(s, []).append(after / before if before > 0 else float("inf"))
        out[member.name] = {str(s): [sum(r > 1 for r in v), len(v), round(max(v), 4)] for s, v in ratios.items()}
    return out


def split(cells: pd.DataFrame) -> dict[str, Any]:
    """The raised-loss cells split by the support's error: count and mean headline change (adapted - start)."""
    rose = cells[cells["finite"] & (cells["loss_after"] > cells["loss_before"])]
    has_error = rose["error_before"].notna() & rose["error_after"].notna()
    fell = rose[has_error & (rose["error_after"] < rose["error_before"])]
    held = rose.drop(fell.index)
    part = lambda p: {"cells": len(p), "mean_gain": round(float(p["gain"].mean()), 4) if len(p) else None,  # noqa: E731
                      "helped": int((p["gain"] > 0).sum()), "hurt": int((p["gain"] < 0).sum())}
    return {"adapted_cells": len(cells), "non_finite": int((~cells["finite"]).sum()), "loss_rose": part(rose),
            "loss_rose_error_fell": part(fell), "loss_rose_error_did_not_fall": part(held)}


def main() -> None:
    args, rows, facts = rows_by_seed(__doc__, seed_rows, lambda f: (
        f"bundle {f['bundle']}; {f['cells']} adapted cells; validation draws whose support loss rose at the chosen "
        f"step size [rose, draws, largest ratio]: {f['validation_rises']}"))
    by_method = {m: split(part) for m, part in rows.groupby("method")}
    by_steps = {f"{m} {s} steps": split(part) for (m, s), part in rows.groupby(["method", "steps"])}
    overall = split(rows)
    for name, facts_of in [("all", overall), *by_method.items(), *by_steps.items()]:
        print(f"{name}: loss rose in {facts_of['loss_rose']['cells']} of {facts_of['adapted_cells']} "
              f"(mean gain {facts_of['loss_rose']['mean_gain']}); error fell in {facts_of['loss_rose_error_fell']} ; "
              f"did not fall in {facts_of['loss_rose_error_did_not_fall']}")
    emit_line("guard_signals", args, facts, overall=overall, by_method=by_method, by_steps=by_steps)


if __name__ == "__main__":
    main()
