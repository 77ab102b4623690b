"""Does ``fml tune``'s preset beat the hand-set one on held-out sites?

For each seed: 1 ``fml tune <vertical> --seed S`` (a fresh study scored on that seed's VALIDATION sites only),
2 ``fml evaluate`` with the hand-set preset (``algorithms: [the tuned one]``), 3 ``fml evaluate`` with the tuned
preset -- same seed, so the same federation, FedAvg baseline, test sites and support draws. The tuned
algorithm's held-out rows of the two runs are paired on (site, shots, steps, draw) and pooled over seeds:
mean [95% interval] of tuned - hand-set per (shots, steps) and at each run's VALIDATION-chosen steps (the
cell a registered model would use). The FedAvg baseline must be identical in both runs (the tuned preset
changes only the tuned algorithm); its largest difference is reported as a check. The LAST line is JSON.

    PYTHONPATH=. python benchmarks/tune_report.py --seeds 0 1 2 --trials 20    # ~10 min on 2 idle cores
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from heldout_common import DRAWS_PER_SEED, emit, parse_flags, temporary_store, with_overrides  # noqa: E402


@dataclass
class Config:
    """Tuned vs hand-set preset on held-out sites."""

    vertical: str = "digits"
    """Vertical (verticals/<name>)."""
    preset: str = "quick"
    """The hand-set preset the study starts from."""
    algorithm: str = "fomaml"
    """The FML algorithm tuned and compared."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One study and two evaluations per seed."""
    trials: int = 20
    """Trials per study."""
    rounds: Optional[int] = None
    """Rounds per trial (default: fml tune's, a third of the preset's rounds)."""
    set: list[str] = field(default_factory=list)
    """Run options over the preset as dotted KEY=VALUE (e.g. data.test_sites=30), for every study and run."""
    output_dir: str = "fml-output/tune-report"
    """Tuned presets and the runs' tables."""
    threads: int = 1
    """torch threads."""
    json_out: Optional[str] = None
    """Also write the closing JSON line to this file."""


def method_rows(out: Path, algorithm: str, headline: str) -> pd.DataFrame:
    rows = pd.read_parquet(out / "evaluation_rows.parquet")
    return rows[(rows["method"] == algorithm) & (rows["metric"] == headline)]


def chosen_steps(selection: pd.DataFrame, algorithm: str, headline: str, higher: bool) -> int:
    """The steps count the run's validation search picked for ``algorithm`` (its best validation cell)."""
    mine = selection[selection["method"] == algorithm]
    col = f"val_{headline}"
    return int(mine.loc[mine[col].idxmax() if higher else mine[col].idxmin(), "steps"])


def paired(hand: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    keys = ["site", "shots", "steps", "draw"]
    both = hand.set_index(keys)["value"].rename("hand").to_frame().join(tuned.set_index(keys)["value"].rename("tuned"),
                                                                      how="inner")
    return both.assign(diff=both["tuned"] - both["hand"]).reset_index()


def main(cfg: Config) -> dict[str, Any]:
    tmp = temporary_store("tune-report", None)  # noqa: F841  (kept alive until the end)
    import torch

    import verticals
    from core.metrics import mean_ci95
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.run import run_pipeline, selection_shots
    from pipelines.tune import TuneOptions, tune

    # 1. the vertical and the hand-set configuration
    verticals.load_all()
    spec = VERTICALS.get(cfg.vertical)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    base_cfg = with_overrides(load_preset(spec, cfg.preset), cfg.set)
    problem = spec.build(base_cfg.data, cfg.seeds[0])
    headline, higher = problem.headline, problem.higher_is_better
    select_shots = selection_shots(base_cfg)
    pairs, at_chosen, fedavg_gap, studies, seconds = [], [], 0.0, {}, {"tune": 0.0, "evaluate": 0.0}
    for seed in cfg.seeds:
        hand_cfg = with_overrides(load_preset(spec, cfg.preset), cfg.set)
        hand_cfg.seed, hand_cfg.algorithms = seed, [cfg.algorithm]
        hand_cfg.tracking.register = False
        # 2. the study on this seed's validation sites
        start = time.perf_counter()
        result = tune(spec, hand_cfg, cfg.preset, TuneOptions(
            algorithm=cfg.algorithm, trials=cfg.trials, rounds=cfg.rounds, study_name=f"report-seed{seed}",
            output=str(out / f"tuned-seed{seed}.yaml")))
        seconds["tune"] += time.perf_counter() - start
        studies[str(seed)] = {"best": result.best_params, "best_val": result.best_value,
                              "hand_set_val": result.hand_set_value, "trials": result.states}
        # 3. both presets on the held-out sites (same seed: same sites, baseline and draws)
        tuned_cfg = load_preset(spec, str(result.output))
        tuned_cfg.tracking.register = False
        runs = {}
        for name, run_cfg in (("hand", hand_cfg), ("tuned", tuned_cfg)):
            run_cfg.output_dir = str(out / f"seed{seed}-{name}")
            start = time.perf_counter()
            runs[name] = run_pipeline(spec, run_cfg, progress=False)
            seconds["evaluate"] += time.perf_counter() - start
        rows = {k: method_rows(r.output_dir, cfg.algorithm, headline) for k, r in runs.items()}
        both = paired(rows["hand"], rows["tuned"]).assign(seed=seed)
        both["draw"] = both["draw"] + seed * DRAWS_PER_SEED
        pairs.append(both)
        # the FedAvg baseline is untouched by the tuned preset: its rows must agree
        base = paired(*(method_rows(r.output_dir, "fedavg+ft", headline) for r in runs.values()))
        fedavg_gap = max(fedavg_gap, float(base["diff"].abs().max()))
        steps = {k: chosen_steps(r.selection, cfg.algorithm, headline, higher) for k, r in runs.items()}
        cell = {k: rows[k][(rows[k]["shots"] == select_shots) & (rows[k]["steps"] == steps[k])] for k in rows}
        # paired on (site, draw): each run at its own chosen steps
        at_chosen.append(paired(cell["hand"].assign(steps=0), cell["tuned"].assign(steps=0)).assign(
            seed=seed, hand_steps=steps["hand"], tuned_steps=steps["tuned"]))
    # 4. pooled over seeds x sites x draws
    allp = pd.concat(pairs, ignore_index=True)
    table = []
    for (k, s), grp in allp.groupby(["shots", "steps"]):
        d, lo, hi = mean_ci95(grp["diff"].tolist())
        table.append({"shots": int(k), "steps": int(s), "hand": round(float(grp["hand"].mean()), 4),
                      "tuned": round(float(grp["tuned"].mean()), 4), "diff": round(d, 4),
                      "ci95": [round(lo, 4), round(hi, 4)], "n": len(grp)})
    print(pd.DataFrame(table).to_string(index=False))
    chosen = pd.concat(at_chosen, ignore_index=True)
    d, lo, hi = mean_ci95(chosen["diff"].tolist())
    verdict = ("tuned better" if lo > 0 else "tuned worse" if hi < 0 else "no clear difference")
    if not higher:
        verdict = {"tuned better": "tuned worse", "tuned worse": "tuned better"}.get(verdict, verdict)
    return {"benchmark": "tune_report", "vertical": cfg.vertical, "preset": cfg.preset, "algorithm": cfg.algorithm,
            "seeds": cfg.seeds, "trials": cfg.trials, "overrides": cfg.set, "headline": headline,
            "studies": studies,
            "at_validation_chosen_steps": {"shots": int(select_shots), "hand": round(float(chosen["hand"].mean()), 4),
                                           "tuned": round(float(chosen["tuned"].mean()), 4), "diff": round(d, 4),
                                           "ci95": [round(lo, 4), round(hi, 4)], "n": len(chosen),
                                           "steps_by_seed": {str(r.seed): [int(r.hand_steps), int(r.tuned_steps)]
                                                             for r in chosen.drop_duplicates("seed").itertuples()},
                                           "verdict": verdict},
            "by_cell": table, "fedavg_max_abs_diff": fedavg_gap,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}


if __name__ == "__main__":
    config = parse_flags(Config)
    emit(main(config), config)
