"""What would a test robot get had its run tried the starts adapted at EVERY (rollouts, steps)? An experiment on a
finished robotics benchmark's folders.

A run tries the starts adapted (``core.choice.choose_by_adapted_trials``; with too few rollouts for every start,
``fedavg+ft`` and the validated default alone, ``core.choice.starts_to_try``) only where its validation robots did
better so than adapting the default on every rollout (``core.evaluation.adapted_trial_steps``). The validation
robots are in range, so their verdict may not hold for robots outside it. This script reloads each seed's trained
models (``benchmarks/every_start.load_finished``), checks that the run's rule reproduces its `auto` rows draw for
draw, and scores `auto-tried`: the same choice told to try the starts adapted wherever the budget allows, on the
run's test draws, paired with the run's `fedavg+ft` per group of robots. What it shows is what the validation
robots' verdict cost or saved on the test robots; it chooses nothing.

    python benchmarks/robotics_heldout.py --preset full --seeds 0 1 2 --output-dir fml-output/regenerate/robotics_full ...
    python benchmarks/robot_tried_everywhere.py robotics --preset full --runs fml-output/regenerate/robotics_full
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRIED = "auto-tried"


def seed_rows(spec: Any, cfg: Any, folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One seed's scored rows (the run's, `auto` included) and `auto-tried`'s, with how its choices differ."""
    from benchmarks.every_start import load_finished
    from core.evaluation import AutoChoice, evaluate_auto

    run = load_finished(spec, cfg, folder)
    problem, rows = run.problem, run.rows
    scored = rows[rows["method"] != "auto"]
    grid = dict(shots_grid=cfg.eval.shots, steps_grid=cfg.eval.steps, draws=cfg.eval.draws, seed=cfg.seed,
                inner=cfg.inner)
    rule = AutoChoice(tuple(run.bundle), run.bundle[0], cfg.eval.choice_folds, run.default_by_steps, run.adapted_trials)
    everywhere = rule.trying_everywhere(cfg.eval.shots, cfg.eval.steps)
    test = problem.federation.role("test")
    keys = ["site", "shots", "steps", "draw", "metric"]
    again = evaluate_auto(problem, run.model, run.methods, test, scored, rule, **grid)
    theirs = rows[rows["method"] == "auto"].set_index(keys)["value"].sort_index()
    ours = again.set_index(keys)["value"].sort_index()
    differing = int((theirs - ours).abs().gt(1e-6).sum())
    if not theirs.index.equals(ours.index) or differing > 0.05 * len(ours):
        raise SystemExit(f"{folder}: the run's rule differs from its auto rows on {differing} of {len(ours)}: other "
                         "code or options than the run's (pass its --preset and --set)")
    tried = evaluate_auto(problem, run.model, run.methods, test, scored, everywhere, **grid).assign(method=TRIED)
    per_cell = tried.drop_duplicates(["site", "shots", "steps", "draw"])
    choices = {f"{k}:{s}": per_cell[(per_cell["shots"] == k) & (per_cell["steps"] == s)]["choice"].value_counts().to_dict()
               for k in cfg.eval.shots for s in cfg.eval.steps if s > 0}
    return (pd.concat([rows, tried[rows.columns.intersection(tried.columns)]], ignore_index=True),
            {"bundle": run.bundle, "default_by_steps": {str(s): n for s, n in run.default_by_steps.items()},
             "run_adapted_trials": {str(k): list(v) for k, v in run.adapted_trials.items()},
             "auto_rows_differing_from_the_run": differing, "tried_choices": choices})


def main() -> None:
    from benchmarks.every_start import emit_line, interval_text, rows_by_seed
    from benchmarks.heldout_tables import paired_by_pool
    from benchmarks.robotics_heldout import PAIRED_POOLS

    args, rows, facts = rows_by_seed(__doc__, seed_rows, lambda f: (
        f"bundle {f['bundle']}; the run tried the starts adapted at (rollouts: steps) {f['run_adapted_trials']}; "
        f"auto-tried chose (rollouts:steps -> start) {f['tried_choices']}"))
    paired = paired_by_pool(rows, "return", **PAIRED_POOLS)
    means = rows[rows["metric"] == "return"].groupby(["method", "shots", "steps"])["value"].mean()
    cells = []
    for (pool, k, s), grp in paired.groupby(["robots", "shots", "steps"]):
        by = {r["method"]: [round(r["mean_diff"], 3), round(r["ci95_low"], 3), round(r["ci95_high"], 3)]
              for _, r in grp.iterrows()}
        singles = {m: v[0] for m, v in by.items() if m not in ("auto", TRIED, "ensemble")} | {"fedavg+ft": 0.0}
        best = max(singles, key=singles.get)
        cells.append({"robots": pool, "shots": int(k), "steps": int(s), "auto": by.get("auto"), TRIED: by.get(TRIED),
                      "best_single": [best, singles[best]]})
    table = pd.DataFrame(cells)
    groups = table[table["robots"].isin(["all", "in-range", "extrapolation"]) & (table["steps"] > 0)]
    pd.set_option("display.width", 220)
    print("\nPaired against fedavg+ft over seeds x draws (return; POSITIVE = better; * interval excludes 0)")
    print(groups.assign(**{m: groups[m].map(interval_text) for m in ("auto", TRIED)},
                        best_single=groups["best_single"].map(lambda v: f"{v[0]} {v[1]:+.1f}")).to_string(index=False))
    below = {m: int(sum(1 for v in table[m] if isinstance(v, list) and v[2] < 0)) for m in ("auto", TRIED)}
    print(f"cells (groups and robots) below fedavg+ft beyond the interval: {below}")
    emit_line("robot_tried_everywhere", args, facts, cells=cells, below=below,
              mean_return={f"{m} {k} {s}": round(float(v), 3) for (m, k, s), v in means.items() if m in ("auto", TRIED)})


if __name__ == "__main__":
    main()
