"""Would a new site do better choosing among EVERY trained start than among the registered bundle's? An
experiment on the folders a finished held-out benchmark left (no retraining, no rescoring).

The registered bundle carries `fedavg+ft` and the ONE FML start that scored best on the validation sites
(``pipelines.registration_choice.bundle_of``), so `auto` can never pick a start the validation sites ranked
lower, even on a test site unlike them (imaging's unseen-protocol clinic, where FO-MAML is the best single
method and Reptile the validation winner). This script loads each seed's trained models (``final.pt``), redoes
the validation step-size search (deterministic: the run's own), checks that the per-site choice among the
bundle reproduces the run's `auto` rows draw for draw, then runs the same choice among every trained start
(`auto-every`), reading each draw's scores from the run's ``evaluation_rows.parquet``. It prints, per test site,
shots and steps, both rows paired against `fedavg+ft` over seeds x draws, and the cells where each is below it
beyond its interval.

    python benchmarks/imaging_heldout.py --preset full --seeds 0 1 2 --output-dir fml-output/regenerate/imaging_full ...
    python benchmarks/every_start.py medical_imaging --preset full --runs fml-output/regenerate/imaging_full --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EVERY = "auto-every"


def bundle_choice(choices: Any, names: list[str]) -> str:
    """What the per-site choice among ``names`` picks from the evidence of a choice among more candidates."""
    from core.choice import choose, pvalues_against
    from core.evaluation import BASELINE

    if choices.trials:  # the budget was split over every start: the bundle's split would run other episodes
        raise SystemExit("a choice from trial episodes (a robot at 0 steps) cannot be re-derived for the bundle")
    if not choices.folds:
        return choices.name  # the default: the same for both
    losses = {n: choices.unit_losses[n] for n in names}
    return choose(losses, BASELINE, pvalues_against(losses, BASELINE))


@dataclass
class Finished:
    """One seed's finished held-out run, reloaded: its trained methods (step sizes searched again on the
    validation sites, deterministic), the registered bundle and the run's scored rows."""

    problem: Any
    model: Any
    methods: list[Any]
    algorithms: list[str]
    bundle: list[str]
    default_by_steps: dict[int, str]
    rows: pd.DataFrame
    adapted_trials: dict[int, tuple[int, ...]]
    """Shots -> steps at which the run's robots tried the starts adapted (its ``fallback_defaults.json``)."""


def load_finished(spec: Any, cfg: Any, folder: Path) -> Finished:
    import torch

    from core.evaluation import select_adaptation, with_recipes
    from pipelines.registration_choice import bundle_of, unsplit_defaults
    from pipelines.run import selection_shots, trained_learner, trained_methods

    algorithms = list(dict.fromkeys(a for a in cfg.algorithms if a != "fedavg"))
    needed = [folder / "evaluation_rows.parquet", *(folder / "checkpoints" / a / "final.pt" for a in ["fedavg", *algorithms])]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"{folder}: not a finished run of these options: missing {missing} (pass the held-out "
                         "benchmark's --output-dir, its --preset and --set)")
    problem = spec.build(cfg.data, cfg.seed)
    final = {name: torch.load(folder / "checkpoints" / name / "final.pt", map_location="cpu", weights_only=False)
             for name in ["fedavg", *algorithms]}
    learners = {name: trained_learner(problem, name, cfg, state) for name, state in final.items()}
    methods, ablation = with_recipes(trained_methods(learners, algorithms, cfg), cfg.eval.recipes)
    methods = methods + ablation
    model = learners["fedavg"].model
    val_sites = problem.federation.role("validation") or problem.federation.role("train")[:5]
    select_adaptation(problem, model, methods, val_sites, shots=selection_shots(cfg), steps_grid=cfg.eval.steps,
                      lr_grid=cfg.eval.lr_grid, draws=cfg.eval.select_draws, seed=cfg.seed, inner=cfg.inner)
    bundle, _ = bundle_of(methods, ["fedavg+ft", *algorithms], problem.higher_is_better)
    return Finished(problem, model, methods, algorithms, [m.name for m in bundle],
                    unsplit_defaults(bundle, cfg.eval.steps, problem.higher_is_better),
                    pd.read_parquet(folder / "evaluation_rows.parquet"), recorded_adapted_trials(folder))


def recorded_adapted_trials(folder: Path) -> dict[int, tuple[int, ...]]:
    """What the run's validation chose (``adapted_trials_by_shots``); none in a run older than that choice."""
    import json

    fallback = folder / "fallback_defaults.json"
    recorded = json.loads(fallback.read_text()).get("adapted_trials_by_shots", {}) if fallback.exists() else {}
    return {int(k): tuple(v) for k, v in recorded.items()}


def differing_from_the_run(run: Finished, picks: pd.DataFrame, folder: Path) -> int:
    """How many (site, shots, steps, draw) cells of ``picks`` (column ``choice``) the run's own `auto` rows chose
    otherwise; exits when they are not the run's draws or differ on more than 5% (another run's models or options)."""
    keys = ["site", "shots", "steps", "draw"]
    run_auto = run.rows[run.rows["method"] == "auto"].drop_duplicates(keys).set_index(keys)["choice"].sort_index()
    mine = picks.set_index(keys)["choice"].sort_index()
    if not run_auto.index.equals(mine.index):
        raise SystemExit(f"{folder}: the draws are not the run's auto rows: other code or options than the run's "
                         "(pass its --preset and --set)")
    differ = int((run_auto != mine).sum())
    if differ > 0.05 * len(mine):  # rounding flips a few close calls; more means another run's models or options
        raise SystemExit(f"{folder}: the bundle's choice differs from the run's auto rows on {differ} of {len(mine)} "
                         "cells: other code or options than the run's (pass its --preset and --set)")
    return differ


def seed_rows(spec: Any, cfg: Any, folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One seed's scored rows with the bundle's `auto` recomputed (checked against the run's) and `auto-every`."""
    from core.evaluation import AutoChoice, evaluate_auto

    run = load_finished(spec, cfg, folder)
    names, rows, problem = run.bundle, run.rows, run.problem
    scored = rows[rows["method"] != "auto"]
    grid = dict(shots_grid=cfg.eval.shots, steps_grid=cfg.eval.steps, draws=cfg.eval.draws, seed=cfg.seed,
                inner=cfg.inner)
    every = [names[0], *[n for n in ["fedavg+ft", *run.algorithms] if n != names[0]]]
    evidence: dict[tuple[str, int, int], Any] = {}
    wide = evaluate_auto(problem, run.model, run.methods, problem.federation.role("test"), scored,
                         AutoChoice(tuple(every), names[0], cfg.eval.choice_folds, run.default_by_steps,
                                    run.adapted_trials),
                         on_choice=lambda site, k, d, choices: evidence.__setitem__((site.site_id, k, d), choices), **grid)
    # the bundle's choice from the same evidence: each candidate's test against the anchor does not depend on the
    # others, so the subset's choice is what a run with the bundle alone picks (no second cross-validation)
    keys = ["site", "shots", "steps", "draw"]
    picks = wide.drop_duplicates(keys)[keys].copy()
    picks["choice"] = [bundle_choice(evidence[(r.site, r.shots, r.draw)][r.steps], names) for r in picks.itertuples()]
    differ = differing_from_the_run(run, picks, folder)
    bundled = picks.merge(scored, left_on=[*keys, "choice"], right_on=[*keys, "method"]).assign(method="auto")
    facts = {"bundle": names, "every": every, "every_choices": wide.drop_duplicates(keys)["choice"].value_counts().to_dict(),
             "draws": len(picks), "bundle_choices_differing_from_the_run": differ,
             "headline": problem.headline, "higher_is_better": problem.higher_is_better}
    return pd.concat([scored, bundled[rows.columns.intersection(bundled.columns)], wide.assign(method=EVERY)],
                     ignore_index=True), facts


def cells_of(paired: pd.DataFrame, sign: float) -> list[dict[str, Any]]:
    """Per (site, shots, steps): `auto` and `auto-every` as [mean, low, high] and the best single start, all
    multiplied by ``sign`` (POSITIVE = better)."""
    out = []
    for (site, k, s), grp in paired.groupby(["site", "shots", "steps"]):
        by = {r["method"]: r for _, r in grp.iterrows()}
        entry: dict[str, Any] = {"site": site, "shots": int(k), "steps": int(s)}
        for m in ("auto", EVERY):
            if m in by:
                lo, hi = sorted((sign * by[m]["ci95_low"], sign * by[m]["ci95_high"]))
                entry[m] = [round(sign * by[m]["mean_diff"], 4), round(lo, 4), round(hi, 4)]
        singles = {m: sign * r["mean_diff"] for m, r in by.items() if m not in ("auto", EVERY, "ensemble")}
        if singles:
            best = max(singles, key=singles.get)
            entry["best_single"] = [best, round(singles[best], 4)]
        out.append(entry)
    return out


def interval_text(value: Any) -> str:
    """``+0.011 [+0.002, +0.020]*`` (starred where the interval excludes 0), or ``-``."""
    if not isinstance(value, list):
        return "-"
    return f"{value[0]:+.3f} [{value[1]:+.3f}, {value[2]:+.3f}]" + ("*" if value[1] > 0 or value[2] < 0 else "")


def reload_options(doc: str) -> tuple[argparse.Namespace, Any]:
    """The command line shared by the scripts that reload a finished held-out benchmark's folders (the vertical,
    the run's preset, seeds and ``--set``, its ``--runs`` folder), parsed, with the process set up as a run's
    (a throw-away MLflow store, torch threads, the verticals registered); returns it and the vertical's spec."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("vertical")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--runs", required=True, type=Path, help="the benchmark's --output-dir (its seed<N> folders)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="+", action="extend", default=[], help="the run's options over the preset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="fml-reload-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
    import torch

    import verticals
    from core.vertical import VERTICALS
    from pipelines.process_setup import configure_process

    configure_process()
    torch.set_num_threads(args.threads)
    verticals.load_all()
    return args, VERTICALS.get(args.vertical)


def seed_config(spec: Any, args: argparse.Namespace, seed: int) -> Any:
    """The run's options for ``seed``: its preset with its ``--set`` overrides."""
    from benchmarks.heldout_common import with_overrides
    from pipelines.config import load_preset

    cfg = with_overrides(load_preset(spec, args.preset), args.set)
    cfg.seed = seed
    return cfg


def rows_by_seed(doc: str, seed_rows: Callable[[Any, Any, Path], tuple[pd.DataFrame, dict[str, Any]]],
                 describe: Callable[[dict[str, Any]], str]) -> tuple[argparse.Namespace, pd.DataFrame, dict[int, Any]]:
    """:func:`reload_options`, then each seed's ``seed_rows`` (draws renumbered per seed, as the benchmarks pool
    them) and facts, one line printed per seed by ``describe``."""
    from benchmarks.heldout_common import DRAWS_PER_SEED

    args, spec = reload_options(doc)
    parts, facts = [], {}
    for seed in args.seeds:
        rows, facts[seed] = seed_rows(spec, seed_config(spec, args, seed), args.runs / f"seed{seed}")
        print(f"seed {seed}: {describe(facts[seed])}", flush=True)
        parts.append(rows.assign(seed=seed, draw=rows["draw"] + seed * DRAWS_PER_SEED))
    return args, pd.concat(parts, ignore_index=True), facts


def emit_line(benchmark: str, args: argparse.Namespace, facts: dict[int, Any], **fields: Any) -> None:
    """The closing JSON line (:func:`heldout_common.emit`: with its command and machine), with the options."""
    from benchmarks.heldout_common import emit

    emit({"benchmark": benchmark, "vertical": args.vertical, "preset": args.preset, "seeds": args.seeds,
          "overrides": args.set, "runs": str(args.runs), "facts": {str(k): v for k, v in facts.items()}, **fields}, args)


def main() -> None:
    from core.evaluation import paired_differences

    args, rows, facts = rows_by_seed(__doc__, seed_rows, lambda f: (
        f"the bundle {f['bundle']} chose otherwise than the run's auto row on "
        f"{f['bundle_choices_differing_from_the_run']} of {f['draws']} (draw, steps) cells (other torch threads "
        f"round otherwise); every start {f['every']} chose {f['every_choices']}"))
    problem_headline, higher = facts[args.seeds[-1]]["headline"], facts[args.seeds[-1]]["higher_is_better"]
    out = cells_of(paired_differences(rows, problem_headline), 1.0 if higher else -1.0)
    table = pd.DataFrame(out)
    pd.set_option("display.width", 200)
    show = table.assign(**{m: table[m].map(interval_text) for m in ("auto", EVERY) if m in table},
                        best_single=table["best_single"].map(lambda v: f"{v[0]} {v[1]:+.3f}" if isinstance(v, list) else "-"))
    print(f"\nPaired against fedavg+ft over seeds x draws ({problem_headline}; POSITIVE = better; * interval excludes 0)")
    print(show.to_string(index=False))
    below = {m: int(sum(1 for v in table[m] if isinstance(v, list) and v[2] < 0)) for m in ("auto", EVERY) if m in table}
    print(f"cells below fedavg+ft beyond the interval: {below}")
    emit_line("every_start", args, facts, cells=out, below=below)


if __name__ == "__main__":
    main()
