"""What a finished run prints: its closing tables and the sentences that say what a new site will get."""
from __future__ import annotations

from typing import Optional

import pandas as pd

from core.evaluation import Method, trained_name
from core.problem import Problem
from pipelines.console import console, print_frame


def split_draws(rows: pd.DataFrame) -> tuple[int, int, int]:
    """``(draws whose support split for cross-validation, auto draws, draws whose unadapted choice came from trial
    episodes)`` over the test sites and shots."""
    if "cv_folds" not in rows:
        return 0, 0, 0
    auto = rows[rows["method"] == "auto"]
    picks = auto.drop_duplicates(["site", "shots", "draw"])
    tried = auto[(auto["steps"] == 0) & (auto["trials"] > 0)] if "trials" in auto else auto.iloc[:0]
    return int((picks["cv_folds"] > 0).sum()), len(picks), len(tried.drop_duplicates(["site", "shots", "draw"]))


def adapted_trials_sentences(by_shots: dict[str, list[int]], validated: bool, starts: int) -> list[str]:
    """The closing lines on where a site whose support is rollouts tries the starts adapted (``by_shots``: rollouts ->
    steps counts, as ``fml.json`` records it; ``starts``: the bundle's); ``validated``: the run compared both ways on
    its validation sites."""
    from core.choice import adapted_trials_fit

    where = "(evaluation/adapted_trials_validation.csv)"
    if validated and not by_shots:
        return ["a site of rollouts adapts the default on every rollout: validation sites did no better trying the "
                f"starts adapted, each on rollouts of its own {where}"]

    def which(k: int) -> str:  # as core.choice.starts_to_try: two starts where the budget cannot try them all
        return (f"the {starts} starts" if adapted_trials_fit(starts, k) else
                f"fedavg+ft and the validated default (too few rollouts to try all {starts} starts)")

    return [f"a site with {k} rollouts tries {which(int(k))} adapted (each on rollouts of its own) after "
            f"{', '.join(map(str, steps))} step(s): validation sites did better so than adapting the default on every "
            f"rollout {where}" for k, steps in by_shots.items()]


def guard_sentence(kept: dict[str, list[int]], guard: bool) -> str:
    """What the held-out table did where adapting raised a test support's own loss (``kept_start_counts``)."""
    if not guard:
        return ("held-out rows scored without the divergence guard (--eval.no-guard): each adaptation as it came, "
                "where `fml onboard` would keep the start")
    fired = {m: c for m, c in kept.items() if c[0] and m != "auto"}  # auto copies the row it chose
    if not fired:
        return "divergence guard: no adaptation diverged on its test support (every adapted cell is scored adapted)"
    return ("divergence guard: adapting raised the test support's own loss, so the cell scores the start unadapted "
            "as `fml onboard` keeps it, in " + ", ".join(f"{m} {k} of {n}" for m, (k, n) in sorted(fired.items()))
            + " adapted cells")


def onboarding_sentence(split: int, total: int, tried: int = 0) -> str:
    """What ``fml onboard`` does with the bundle, in the words this run's test draws support."""
    if total == 0:
        return "`fml onboard` adapts the default"
    if split == 0:
        trials = (f"; a robot that will not adapt (`--steps 0`) runs each start on its own rollouts instead, when they "
                  f"give each start at least 3 ({tried} of {total} test draws here)" if tried else "")
        return (f"no test support here could be split for cross-validation (0 of {total} draws: rollouts, or one "
                "example of a class), so `fml onboard` starts such a site from the default" + trials)
    return (f"`fml onboard` chooses among them per site by cross-validation on its support set where it splits "
            f"({split} of {total} test draws here; the others got the default)")


def print_closing(summary: pd.DataFrame, paired: pd.DataFrame, choices: pd.DataFrame, problem: Problem,
                  bundle: list[Method], reason: str, registered: Optional[dict], shots: int,
                  split: tuple[int, int, int]) -> None:
    """The run's closing tables (held-out means, paired differences, ``auto``'s picks) and lines (default, bundle,
    registration)."""
    cells = summary[(summary["site"] == "ALL") & (summary["metric"] == problem.headline)].copy()
    cells["cell"] = cells.apply(lambda r: f"{r['mean']:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]", axis=1)
    table = cells.pivot_table(index=["method", "shots"], columns="steps", values="cell", aggfunc="first").fillna("-")
    print_frame(table.reset_index(), f"Held-out {problem.headline} (mean [95% CI]) by adaptation steps")
    if not paired.empty:
        p = paired[paired["site"] == "ALL"].copy()
        p["diff"] = p.apply(lambda r: f"{r['mean_diff']:+.3f} [{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}]"
                            + ("*" if r["ci95_low"] > 0 or r["ci95_high"] < 0 else ""), axis=1)
        better = "higher" if problem.higher_is_better else "lower"
        print_frame(p.pivot_table(index=["method", "shots"], columns="steps", values="diff", aggfunc="first")
                    .fillna("-").reset_index(), f"Paired difference vs fedavg+ft (same draws; method - fedavg+ft, "
                    f"{better} is better; * the 95% interval excludes 0)")
    if not choices.empty:
        mine = choices[choices["site"] == "ALL"]
        print_frame(mine.pivot_table(index=["shots", "steps"], columns="choice", values="draws", aggfunc="sum")
                    .fillna(0).astype(int).reset_index(), "auto: candidate chosen per draw (all test sites)")
    best = bundle[0]
    if trained_name(best.name) == "fedavg":
        console.print(f"[bold yellow]{best.name} (the FedAvg model, recipe {best.recipe}) is the registered default: "
                      f"{reason}.[/]")
    else:
        console.print(f"default: [bold]{best.name}[/] (adapt {best.best_steps} steps at {best.rate_text}): {reason}")
    console.print("bundle: " + ", ".join(f"{m.name} ({m.best_steps} steps, {m.rate_text})" for m in bundle)
                  + "; " + onboarding_sentence(*split))
    if registered:
        console.print(f"registered [bold]{registered['name']}[/] v{registered['version']} as "
                      f"@{registered['alias']}: {registered['reason']}")
