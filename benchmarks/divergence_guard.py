"""Does the held-out `auto` row differ from what `fml onboard` gives? Onboarding's divergence guard, measured on the
folders a finished held-out benchmark left (no retraining; a diagnostic).

`fml onboard` keeps a start UNADAPTED when adapting it raised the site's own support loss
(``core.guard.divergence``: a step size chosen on validation sites that is too large for this site). Since
2026-12-07 the held-out protocol applies the same guard (``eval.guard``); a line measured before (its command says
``eval.guard=false``) scored every adaptation as it came, so its `auto` row is the onboarding choice WITHOUT that
guard: this script says by how much (on a guarded line every guarded row equals the run's). This script reloads each seed's trained models (as ``every_start.py`` does), recomputes the bundle's per-site
choice on every test draw (checked against the run's `auto` rows), adapts the chosen start as onboarding does and
counts the (draw, steps) cells the guard would keep unadapted. It prints `auto` as the run scored it, `auto` with
the guard (that start's unadapted score where the guard fires), `fedavg+ft` with the guard (onboarding with
``--candidate fedavg+ft``) and, where the run has an `ensemble` row, the ensemble with each member guarded (``--candidate
ensemble``: the average rescored where a member's guard fires), each paired against the run's `fedavg+ft`, and the
guarded `auto` and `ensemble` against the guarded `fedavg+ft` (what they add when all onboard as `fml onboard` does),
pooled and per test site.

    python benchmarks/maintenance_heldout.py --preset full --seeds 0 1 2 --output-dir fml-output/regenerate/maintenance_full ...
    python benchmarks/divergence_guard.py maintenance --preset full --runs fml-output/regenerate/maintenance_full --seeds 0 1 2

The LAST line is JSON (``--json-out`` also writes it).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.every_start import (  # noqa: E402
    differing_from_the_run, emit_line, interval_text, load_finished, rows_by_seed)
from core.evaluation import method_candidate  # noqa: E402  (module level: a test swaps it for the guard alone)

GUARDED = {"auto": "auto+guard", "fedavg+ft": "fedavg+ft+guard", "ensemble": "ensemble+guard"}
BOTH_GUARDED = "auto+guard vs fedavg+ft+guard"  # paired against the guarded baseline, not the run's
ENSEMBLE_GUARDED = "ensemble+guard vs fedavg+ft+guard"
KEYS = ["site", "shots", "steps", "draw"]


def seed_rows(spec: Any, cfg: Any, folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One seed's `fedavg+ft`, `auto` and `ensemble` rows as scored, and each with onboarding's guard (the
    ensemble's: each member guarded, as ``fml onboard --candidate ensemble`` does, and the average rescored where one
    fires); and the guard's counts."""
    from core.ensemble import ENSEMBLE, score_ensemble
    from core.evaluation import AutoChoice, evaluate_auto, task_generator
    from pipelines.onboard import guarded_adaptation

    run = load_finished(spec, cfg, folder)
    problem, model = run.problem, run.model
    scored = run.rows[run.rows["method"] != "auto"]
    tests = problem.federation.role("test")
    picks = evaluate_auto(problem, model, run.methods, tests, scored,
                          AutoChoice(tuple(run.bundle), run.bundle[0], cfg.eval.choice_folds, run.default_by_steps,
                                     run.adapted_trials),
                          shots_grid=cfg.eval.shots, steps_grid=cfg.eval.steps, draws=cfg.eval.draws, seed=cfg.seed,
                          inner=cfg.inner).drop_duplicates(KEYS)[[*KEYS, "choice"]]
    differ = differing_from_the_run(run, picks, folder)
    loss_fn = problem.loss_fn(model)
    head = problem.param_groups(model)["head"]
    by_name = {m.name: method_candidate(m, cfg.inner, head) for m in run.methods if m.name in run.bundle}
    index = {site.site_id: i for i, site in enumerate(tests)}
    fired: dict[tuple[str, int, int, int, str], bool] = {}

    def task_of(site: str, k: int, d: int) -> Any:
        i = index[site]
        return problem.few_shot_task(model, tests[i], k, task_generator(cfg.seed, i, k, d))

    def guarded(task: Any, site: str, k: int, s: int, d: int, name: str) -> Any:
        """``name`` adapted as onboarding adapts it (its start where the guard fires); the firing is remembered."""
        params, why = guarded_adaptation(by_name[name], task, loss_fn, s)
        fired[(site, k, s, d, name)] = why is not None
        return params

    def fires(site: str, k: int, s: int, d: int, name: str) -> bool:
        if s == 0:
            return False
        if (site, k, s, d, name) not in fired:
            guarded(task_of(site, k, d), site, k, s, d, name)
        return fired[(site, k, s, d, name)]

    ensemble_parts, ensemble_fired = [], 0
    for (site, k, s, d), cell in scored[scored["method"] == ENSEMBLE].groupby(KEYS, sort=False):
        values = dict(zip(cell["metric"], cell["value"]))
        if s > 0:
            task = task_of(site, k, d)
            members = [guarded(task, site, k, s, d, name) for name in run.bundle]
            if any(fired[(site, k, s, d, name)] for name in run.bundle):
                ensemble_fired += 1
                values = score_ensemble(task, members)
        ensemble_parts.append(pd.DataFrame({"site": site, "shots": k, "steps": s, "draw": d, "metric": list(values),
                                            "value": [float(v) for v in values.values()], "method": GUARDED[ENSEMBLE]}))

    table = scored.set_index([*KEYS[:3], "method", KEYS[3]]).sort_index()
    out = [scored[scored["method"].isin(["fedavg+ft", ENSEMBLE])], *ensemble_parts]
    counts = {}
    for row_name, choices in (("auto", picks), ("fedavg+ft", picks.assign(choice="fedavg+ft"))):
        for guard in (False, True):
            if row_name == "fedavg+ft" and not guard:
                continue  # the run's own rows, above
            parts, n = [], 0
            for r in choices.itertuples():
                keep = guard and fires(r.site, r.shots, r.steps, r.draw, r.choice)
                n += keep
                chosen = table.loc[(r.site, r.shots, 0 if keep else r.steps, r.choice, r.draw)]
                parts.append(pd.DataFrame({"site": r.site, "shots": r.shots, "steps": r.steps, "draw": r.draw,
                                           "metric": chosen["metric"].to_numpy(), "value": chosen["value"].to_numpy(),
                                           "method": GUARDED[row_name] if guard else row_name}))
            out.append(pd.concat(parts, ignore_index=True))
            if guard:
                counts[GUARDED[row_name]] = n
    if ensemble_parts:
        counts[GUARDED[ENSEMBLE]] = ensemble_fired  # (draw, steps) cells where a member's guard fired
    facts = {"bundle": run.bundle, "cells": len(picks), "adapted_cells": int((picks["steps"] > 0).sum()),
             "guard_fired": counts, "bundle_choices_differing_from_the_run": differ,
             "headline": problem.headline, "higher_is_better": problem.higher_is_better}
    return pd.concat(out, ignore_index=True), facts


def summary(paired: pd.DataFrame, sign: float) -> list[dict[str, Any]]:
    """Per (site, shots, steps, row): the paired difference against `fedavg+ft` as [mean, low, high], POSITIVE =
    better."""
    out = []
    for r in paired.itertuples():
        lo, hi = sorted((sign * r.ci95_low, sign * r.ci95_high))
        out.append({"site": r.site, "shots": int(r.shots), "steps": int(r.steps), "method": r.method,
                    "diff": [round(sign * r.mean_diff, 4), round(lo, 4), round(hi, 4)]})
    return out


def main() -> None:
    from core.evaluation import paired_differences

    args, rows, facts = rows_by_seed(__doc__, seed_rows, lambda f: (
        f"bundle {f['bundle']}; the guard keeps the start unadapted on {f['guard_fired']} of {f['adapted_cells']} "
        "adapted (draw, steps) cells"))
    last = facts[args.seeds[-1]]
    sign = 1.0 if last["higher_is_better"] else -1.0
    # and what the onboarding choice gives against onboarding from FedAvg + fine-tuning, both guarded
    both = paired_differences(rows, last["headline"], baseline=GUARDED["fedavg+ft"])
    against_guarded = {GUARDED["auto"]: BOTH_GUARDED, GUARDED["ensemble"]: ENSEMBLE_GUARDED}
    both = both[both["method"].isin(against_guarded)].replace({"method": against_guarded})
    cells = summary(pd.concat([paired_differences(rows, last["headline"]), both], ignore_index=True), sign)
    table = pd.DataFrame(cells)
    wide = table.assign(diff=table["diff"].map(interval_text)).pivot(index=["site", "shots", "steps"], columns="method",
                                                                      values="diff")
    pd.set_option("display.width", 200)
    print(f"\nPaired against the run's fedavg+ft over seeds x draws ({last['headline']}; POSITIVE = better; "
          "* interval excludes 0)")
    print(wide.to_string())
    below = {m: int(sum(1 for c in cells if c["method"] == m and c["site"] != "ALL" and c["diff"][2] < 0))
             for m in ("auto", "ensemble", *GUARDED.values(), BOTH_GUARDED, ENSEMBLE_GUARDED)
             if any(c["method"] == m for c in cells)}
    print(f"test-site cells below their baseline beyond the interval: {below}")
    emit_line("divergence_guard", args, facts, cells=cells, below=below)


if __name__ == "__main__":
    main()
