"""Would a robot that ADAPTS do better trying the starts first? An experiment on a finished robotics benchmark.

A robot's support is rollouts of the policy being adapted, so it cannot be cross-validated, and a robot that
adapts started from the validated default (`auto` after 1+ steps) until 2026-12-07, when `adapted-trials` below
became the rule where a run's validation robots choose it (``core.choice.choose_by_adapted_trials``; on a run made
since, the `auto` column is that rule's). A robot that does not adapt splits its k
rollouts over the bundle's starts and keeps the one its own episodes show clearly better
(``core.choice.choose_by_trials``). This script asks whether the same trial should also pick the start of a robot
that adapts: `trials-adapt` spends the draw's k rollouts exactly as the 0-step choice does, then adapts the chosen
start on ITS OWN trial rollouts (k / n of them: no more interaction than k), with its validated step size, and
scores it on the draw's scored episodes (the same as every row's). Where k / n is under ``MIN_TRIALS`` it is the
run's `auto` (the default adapted on all k). The price: the chosen start adapts on k / n rollouts instead of k.
`trials-adapt-all` adapts the pick on EVERY start's trial rollouts instead (all k; the other starts' episodes
enter the surrogate with the log-probabilities of the policy that ran them, as PPO treats older data: its clipped
ratio limits how far they move the pick). `trials-veto` changes the anchor, not the budget: after s steps the
validated default of s steps is kept unless another start's trial returns are clearly higher (the same test), and
the pick adapts on its own trial rollouts (unadapted it is `auto`). `trials-veto-min` spends only what the test
needs on trials (``MIN_TRIALS`` episodes per start; unadapted, the same anchor as `auto`) and adapts the pick on
its trial episodes plus the rest of the budget as fresh rollouts of the pick. `trials-veto-min-lr` is that with
the step size validated (on the validation robots, as the run validates its own) for the number of rollouts the
pick adapts on, not for the run's selection shots. `adapted-trials` tries the ADAPTED starts instead: each start
adapts on its share of the budget less ``MIN_TRIALS`` rollouts, then runs ``MIN_TRIALS`` episodes adapted, and
`fedavg+ft` is kept unless another adapted start's returns are clearly higher (needs k >= n * (MIN_TRIALS + 1);
unadapted it is `auto`).

Reloads each seed's trained models (``benchmarks/every_start.load_finished``: the step sizes searched again on the
validation robots, deterministic), draws each test task as the run did and pairs each variant with the run's
`fedavg+ft` rows, per group of robots and per robot.

    python benchmarks/robotics_heldout.py --preset full --seeds 0 1 2 --output-dir fml-output/regenerate/robotics_full ...
    python benchmarks/robot_trials_then_adapt.py robotics --preset full --runs fml-output/regenerate/robotics_full
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHOD = "trials-adapt"
POOLED = "trials-adapt-all"
VETO = "trials-veto"
VETO_MIN = "trials-veto-min"
VETO_MIN_LR = "trials-veto-min-lr"
ADAPTED = "adapted-trials"
VARIANTS = (METHOD, POOLED, VETO, VETO_MIN, VETO_MIN_LR, ADAPTED)


class FixedSupport:
    """A task stand-in whose support is a given batch (``core.evaluation._adapted`` asks only for it)."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def support(self, params: Any) -> Any:
        return self.batch


def trial_batches(problem: Any, task: Any, candidates: list[Any], share: int) -> list[Any]:
    """The policy-gradient batch of each start's trial rollouts (the episodes its trial ran, seeded as there)."""
    from verticals.robotics.problem import TRIAL_SEED_STRIDE

    return [problem.rollout_batch(task.site, share, task.support_seed + TRIAL_SEED_STRIDE * (j + 1), c.params)
            for j, c in enumerate(candidates)]


def cached_trials(task: Any) -> Any:
    """``task.trial_scores``, each start's episodes run once however many anchors are tried against them."""
    cache: dict[tuple[int, int], Any] = {}

    def trials(params: Any, episodes: int, trial: int) -> Any:
        if (trial, episodes) not in cache:
            cache[trial, episodes] = task.trial_scores(params, episodes, trial)
        return cache[trial, episodes]

    return trials


def step_sizes_for(run: Any, cfg: Any, shots: int) -> dict[str, Any]:
    """The bundle's methods with each steps count's step size validated for supports of ``shots`` rollouts (the
    run's search, ``core.evaluation.select_adaptation``, on copies: the run's own methods are untouched)."""
    from core.evaluation import select_adaptation

    copies = [dataclasses.replace(m, lr_by_steps={}, recipe_by_steps={}, validation_draws={})
              for m in run.methods if m.name in run.bundle]
    federation = run.problem.federation
    select_adaptation(run.problem, run.model, copies, federation.role("validation") or federation.role("train")[:5],
                      shots=shots, steps_grid=cfg.eval.steps, lr_grid=cfg.eval.lr_grid, draws=cfg.eval.select_draws,
                      seed=cfg.seed, inner=cfg.inner)
    return {m.name: m for m in copies}


def seed_rows(spec: Any, cfg: Any, folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One seed's scored rows (the run's, `auto` included) and each variant's, with how often each start was kept."""
    from benchmarks.every_start import load_finished
    from core.choice import MIN_TRIALS, choose_by_trials
    from core.evaluation import BASELINE, _adapted, _guarded, _lr_for, method_candidate, task_generator
    from verticals.robotics.problem import TRIAL_SEED_STRIDE

    run = load_finished(spec, cfg, folder)
    problem, model, rows = run.problem, run.model, run.rows
    by_name = {m.name: m for m in run.methods}
    loss_fn, head = problem.loss_fn(model), problem.param_groups(model)["head"]
    candidates = [method_candidate(by_name[n], cfg.inner, head) for n in run.bundle]
    auto = rows[rows["method"] == "auto"].set_index(["site", "shots", "steps", "draw"]).sort_index()
    records, kept, vetoes = [], {}, {}

    def add(name: str, site_id: str, k: int, d: int, scores: dict[int, dict[str, float]]) -> None:
        records.extend({"site": site_id, "method": name, "shots": k, "steps": s, "draw": d, "metric": m,
                        "value": float(v)} for s, by_metric in scores.items() for m, v in by_metric.items())

    def adapted_scores(task: Any, name: str, support: Any, own: Any, methods: Any = None) -> dict[int, dict[str, float]]:
        method = (methods or by_name)[name]
        adapted = _adapted(loss_fn, method, support, cfg.eval.steps, cfg.inner, _lr_for(method), head)
        if cfg.eval.guard and method.adapts:
            adapted, _ = _guarded(loss_fn, method, own, adapted, cfg.inner)
        return {s: task.score(p) for s, p in adapted.items()}

    def adapted_trials(task: Any, k: int, unadapted: dict[int, dict[str, float]]) -> Optional[dict[int, dict[str, float]]]:
        """Each start adapted on its share less MIN_TRIALS rollouts, then MIN_TRIALS episodes of it adapted; the
        adapted start whose returns are clearly higher than `fedavg+ft`'s (else `fedavg+ft`) is scored. None when a
        share leaves no rollout to adapt on."""
        share = k // len(candidates) - MIN_TRIALS
        if share < 1:
            return None
        out = dict(unadapted)
        for s in (s for s in cfg.eval.steps if s > 0):
            adapted: dict[int, Any] = {}

            def adapted_episodes(params: Any, episodes: int, j: int) -> list[float]:
                """Start ``j`` adapted ``s`` steps on ``share`` rollouts of its own, then run ``episodes`` episodes."""
                seed = task.support_seed + TRIAL_SEED_STRIDE * (len(candidates) + 2 + j)
                method = by_name[candidates[j].name]
                support = FixedSupport(problem.rollout_batch(task.site, share, seed, params))
                adapted[j] = _adapted(loss_fn, method, support, [s], cfg.inner, _lr_for(method), head)[s]
                return task.trial_scores(adapted[j], episodes, j)

            # the 0-step rule's test, on the adapted starts' episodes
            pick = choose_by_trials(adapted_episodes, candidates, MIN_TRIALS * len(candidates), BASELINE,
                                    problem.higher_is_better).name
            vetoes[f"adapted {s}:{pick}"] = vetoes.get(f"adapted {s}:{pick}", 0) + 1
            out[s] = task.score(adapted[run.bundle.index(pick)])
        return out

    def copy_auto(names: Any, site_id: str, k: int, d: int) -> None:
        """The run's `auto` rows of the draw, as these variants' (too few rollouts for their trials)."""
        same = auto.loc[(site_id, k, slice(None), d)].reset_index()
        for name in names:
            records.extend(same.assign(method=name, site=site_id, shots=k, draw=d)[
                ["site", "method", "shots", "steps", "draw", "metric", "value"]].to_dict("records"))

    n = len(candidates)
    revalidated = {k: step_sizes_for(run, cfg, MIN_TRIALS + k - MIN_TRIALS * n)
                   for k in cfg.eval.shots if k >= MIN_TRIALS * n}
    for i, site in enumerate(problem.federation.role("test")):
        for k in cfg.eval.shots:
            for d in range(cfg.eval.draws):
                task = problem.few_shot_task(model, site, k, task_generator(cfg.seed, i, k, d))
                trials = cached_trials(task)
                choice = choose_by_trials(trials, candidates, k, BASELINE, problem.higher_is_better)
                if choice is None:  # too few rollouts to try the starts: the run's auto (the default on all k)
                    copy_auto(VARIANTS, site.site_id, k, d)
                    kept["default"] = kept.get("default", 0) + 1
                    continue
                kept[choice.name] = kept.get(choice.name, 0) + 1
                share = choice.trials
                own = {c.name: dataclasses.replace(task, shots=share, support_seed=task.support_seed +
                                                   TRIAL_SEED_STRIDE * (j + 1)) for j, c in enumerate(candidates)}
                by_pick = {choice.name: adapted_scores(task, choice.name, own[choice.name], own[choice.name])}
                add(METHOD, site.site_id, k, d, by_pick[choice.name])
                pooled = FixedSupport(tuple(torch.cat(parts) for parts in zip(*trial_batches(problem, task, candidates, share))))
                add(POOLED, site.site_id, k, d, adapted_scores(task, choice.name, pooled, own[choice.name]))
                # the veto: each steps count's validated default is kept unless the trials show another clearly better
                veto = {}
                for s in cfg.eval.steps:
                    pick = choice.name if s == 0 else choose_by_trials(trials, candidates, k, run.default_by_steps[s],
                                                                       problem.higher_is_better).name
                    vetoes[f"{s}:{pick}"] = vetoes.get(f"{s}:{pick}", 0) + 1
                    if pick not in by_pick:
                        by_pick[pick] = adapted_scores(task, pick, own[pick], own[pick])
                    veto[s] = by_pick[pick][s]
                add(VETO, site.site_id, k, d, veto)
                # the veto on the fewest trials the test can pass (MIN_TRIALS each); the pick adapts on its own trial
                # episodes and the rest of the budget, fresh rollouts of the pick
                lean, lean_lr, spare = {}, {}, k - MIN_TRIALS * len(candidates)
                for s in cfg.eval.steps:
                    anchor = BASELINE if s == 0 else run.default_by_steps[s]
                    pick = choose_by_trials(trials, candidates, MIN_TRIALS * len(candidates), anchor,
                                            problem.higher_is_better).name
                    vetoes[f"min {s}:{pick}"] = vetoes.get(f"min {s}:{pick}", 0) + 1
                    if pick not in lean:
                        j = run.bundle.index(pick)
                        parts = [problem.rollout_batch(site, MIN_TRIALS, task.support_seed + TRIAL_SEED_STRIDE * (j + 1),
                                                       by_name[pick].params)]
                        if spare:
                            parts.append(problem.rollout_batch(site, spare, task.support_seed + TRIAL_SEED_STRIDE * (
                                len(candidates) + 1), by_name[pick].params))
                        support = FixedSupport(tuple(torch.cat(t) for t in zip(*parts)))
                        lean[pick] = adapted_scores(task, pick, support, own[pick])
                        lean_lr[pick] = (adapted_scores(task, pick, support, own[pick], revalidated[k])
                                         if k in revalidated else lean[pick])
                    add(VETO_MIN, site.site_id, k, d, {s: lean[pick][s]})
                    add(VETO_MIN_LR, site.site_id, k, d, {s: lean_lr[pick][s]})
                tried = adapted_trials(task, k, {0: by_pick[choice.name][0]})
                if tried is None:
                    copy_auto([ADAPTED], site.site_id, k, d)
                else:
                    add(ADAPTED, site.site_id, k, d, tried)
    new = pd.DataFrame.from_records(records)
    # unadapted, the trial's pick on the whole budget IS the run's 0-step auto: a check that these are the run's
    # draws and choices (the lean variants try the starts on fewer episodes, so they may differ there)
    keys = ["site", "shots", "steps", "draw", "metric"]
    zero = new[(new["steps"] == 0) & (new["method"] == METHOD)].merge(rows[rows["method"] == "auto"], on=keys,
                                                                      suffixes=("", "_run"))
    mismatch = int((zero["value"] - zero["value_run"]).abs().gt(1e-6).sum())
    if len(zero) == 0 or mismatch > 0.05 * len(zero):
        raise SystemExit(f"{folder}: the 0-step trial choices differ from the run's auto rows on {mismatch} of "
                         f"{len(zero)}: other code or options than the run's (pass its --preset and --set)")
    return (pd.concat([rows[new.columns], new], ignore_index=True),
            {"bundle": run.bundle, "default_by_steps": {str(s): n for s, n in run.default_by_steps.items()},
             "kept": kept, "veto_picks": vetoes, "zero_step_rows_differing_from_the_run": mismatch,
             "step_sizes_by_shots": {str(k): {m.name: {str(s): lr for s, lr in m.lr_by_steps.items()} for m in ms.values()}
                                     for k, ms in revalidated.items()},
             "run_step_sizes": {m.name: {str(s): lr for s, lr in m.lr_by_steps.items()} for m in run.methods
                                if m.name in run.bundle}})


def main() -> None:
    from benchmarks.every_start import emit_line, interval_text, rows_by_seed
    from benchmarks.heldout_tables import paired_by_pool
    from benchmarks.robotics_heldout import PAIRED_POOLS

    args, rows, facts = rows_by_seed(__doc__, seed_rows, lambda f: f"bundle {f['bundle']}; trials kept {f['kept']}; "
                                  f"the veto's picks (steps:start) {f['veto_picks']}")
    paired = paired_by_pool(rows, "return", **PAIRED_POOLS)
    cells = []
    for (pool, k, s), grp in paired.groupby(["robots", "shots", "steps"]):
        by = {r["method"]: [round(r["mean_diff"], 3), round(r["ci95_low"], 3), round(r["ci95_high"], 3)]
              for _, r in grp.iterrows()}
        singles = {m: v[0] for m, v in by.items() if m not in ("auto", *VARIANTS, "ensemble")}
        best = max(singles, key=singles.get)
        cells.append({"robots": pool, "shots": int(k), "steps": int(s), "auto": by.get("auto"),
                      **{m: by.get(m) for m in VARIANTS}, "best_single": [best, singles[best]]})
    table = pd.DataFrame(cells)
    groups = table[table["robots"].isin(["all", "in-range", "extrapolation"])]
    pd.set_option("display.width", 220)
    print("\nPaired against fedavg+ft over seeds x draws (return; POSITIVE = better; * interval excludes 0)")
    print(groups.assign(**{m: groups[m].map(interval_text) for m in ("auto", *VARIANTS)},
                        best_single=groups["best_single"].map(lambda v: f"{v[0]} {v[1]:+.1f}")).to_string(index=False))
    below = {m: int(sum(1 for v in table[m] if isinstance(v, list) and v[2] < 0)) for m in ("auto", *VARIANTS)}
    print(f"cells (groups and robots) below fedavg+ft beyond the interval: {below}")
    emit_line("robot_trials_then_adapt", args, facts, cells=cells, below=below)


if __name__ == "__main__":
    main()
