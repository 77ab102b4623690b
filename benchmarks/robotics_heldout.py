"""Robotics held-out-robot benchmark: ``fml run robotics`` end to end, then onboarding of one new robot.

Prints the held-out table of the evaluation protocol (mean return and 95% interval by method, shots and
adaptation steps) for all test robots, for the in-range robots (``test-*``) and the extrapolation robots
(``extrap-*``, one dynamics parameter outside the training range) separately, the paired differences
against the tuned ``fedavg+ft`` baseline, and the wall times of meta-training and of onboarding one robot.
The LAST line is the JSON of BENCHMARKS.md's vertical format (each row also says which robots it pools).

MLflow goes to a temporary store unless ``--store`` names one, so the benchmark never moves the
``champion`` alias of a real registry. torch runs with the vertical's ``data.torch_threads`` (1: the
policy's ops are tiny and extra threads only add overhead).

    PYTHONPATH=. python benchmarks/robotics_heldout.py --preset quick
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import tyro


@dataclass
class BenchConfig:
    """Robotics held-out benchmark."""

    preset: str = "quick"
    """Preset of verticals/robotics/presets (quick or full)."""
    seed: int = 0
    """Seed of the whole run (fleet, rounds, draws)."""
    store: Optional[str] = None
    """MLflow tracking URI (default: a temporary SQLite store, deleted afterwards)."""
    output_dir: str = "fml-output/bench-robotics"
    """Tables, plots and checkpoints of the run."""
    onboard_robot: str = "goal=0.3,-0.2;gain=2.2;rotation=40"
    """The new robot onboarded after the run (gain 2.2 lies outside the training range 0.5-1.5)."""


def group_of(site: str) -> str:
    return "extrapolation" if site.startswith("extrap-") else "in-range"


def pooled(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and 95% interval per (robots, method, shots, steps) over sites x draws."""
    from core.metrics import mean_ci95

    sub = rows[rows["metric"] == metric].copy()
    sub["robots"] = sub["site"].map(group_of)
    out = []
    for robots, part in [("all", sub), *sub.groupby("robots")]:
        for (method, shots, steps), grp in part.groupby(["method", "shots", "steps"]):
            m, lo, hi = mean_ci95(grp["value"].tolist())
            out.append({"robots": robots, "method": method, "shots": int(shots), "steps": int(steps),
                        "mean": m, "ci95": [lo, hi], "n": len(grp)})
    return pd.DataFrame.from_records(out)


def paired(rows: pd.DataFrame, metric: str, baseline: str = "fedavg+ft") -> pd.DataFrame:
    """FML minus the tuned baseline on the SAME draws, per robots group."""
    from core.metrics import mean_ci95

    sub = rows[rows["metric"] == metric].copy()
    sub["robots"] = sub["site"].map(group_of)
    keys = ["site", "shots", "steps", "draw"]
    base = sub[sub["method"] == baseline].set_index(keys)["value"]
    out = []
    for method in sorted(set(sub["method"]) - {baseline, "fedavg", "local"}):
        mine = sub[sub["method"] == method].set_index(keys)["value"]
        diff = (mine - base).dropna().reset_index()
        diff["robots"] = diff["site"].map(group_of)
        for robots, part in [("all", diff), *diff.groupby("robots")]:
            for (shots, steps), grp in part.groupby(["shots", "steps"]):
                m, lo, hi = mean_ci95(grp["value"].tolist())
                out.append({"robots": robots, "method": method, "shots": int(shots), "steps": int(steps),
                            "diff": f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"})
    return pd.DataFrame.from_records(out)


def table(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame.assign(cell=frame.apply(lambda r: f"{r['mean']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
                                          axis=1))
    return cells.pivot_table(index=["robots", "method", "shots"], columns="steps", values="cell",
                             aggfunc="first").reset_index()


def main(cfg: BenchConfig) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="fml-bench-robotics-")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.store or f"sqlite:///{Path(tmp.name) / 'mlflow.db'}"
    os.environ.setdefault("FML_HOME", tmp.name)
    import verticals
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.onboard import onboard
    from pipelines.run import run_pipeline

    # 1. the pipeline, end to end
    verticals.load_all()
    spec = VERTICALS.get("robotics")
    run_cfg = load_preset(spec, cfg.preset)
    run_cfg.seed, run_cfg.output_dir = cfg.seed, cfg.output_dir
    run_cfg.tracking.experiment = "fml-robotics-benchmark"
    start = time.perf_counter()
    result = run_pipeline(spec, run_cfg, progress=False)
    pipeline_seconds = time.perf_counter() - start
    # 2. onboarding one new robot from the registered meta-initialization
    onboarded = onboard(spec, data=None, site_id="bench-robot", overrides={"robot": cfg.onboard_robot},
                        seed=cfg.seed)
    # 3. tables
    rows = pd.read_parquet(result.output_dir / "evaluation_rows.parquet")
    summary = pooled(rows, "return")
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    print(f"\nHeld-out mean return [95% CI] by adaptation steps (preset {cfg.preset}, seed {cfg.seed})")
    print(table(summary).to_string(index=False))
    diffs = paired(rows, "return")
    if not diffs.empty:
        print("\nPaired difference vs tuned fedavg+ft (same draws)")
        print(diffs.pivot_table(index=["robots", "method", "shots"], columns="steps", values="diff",
                                aggfunc="first").reset_index().to_string(index=False))
    success = pooled(rows, "success_rate")
    if not success.empty:
        print("\nSuccess rate (final distance < 0.1) by adaptation steps")
        print(table(success).to_string(index=False))
    print("\nAdaptation settings chosen on validation robots")
    chosen = result.selection[result.selection["chosen"]] if not result.selection.empty else result.selection
    print(chosen.to_string(index=False))
    train = {k: round(v, 2) for k, v in result.train_seconds.items()}
    print(f"\nwall times: meta-training {train} s; whole pipeline {pipeline_seconds:.1f} s; onboarding one robot "
          f"(rollouts + adapt + score) {onboarded.seconds:.2f} s; best on validation: {result.best_algorithm}")
    out = {"vertical": "robotics", "preset": cfg.preset, "train_seconds": train,
           "pipeline_seconds": round(pipeline_seconds, 2), "onboard_seconds": round(onboarded.seconds, 3),
           "headline_metric": "return",
           "rows": [{"method": r["method"], "shots": r["shots"], "steps": r["steps"], "robots": r["robots"],
                     "mean": round(r["mean"], 3), "ci95": [round(r["ci95"][0], 3), round(r["ci95"][1], 3)]}
                    for _, r in summary.iterrows()]}
    tmp.cleanup()
    return out


if __name__ == "__main__":
    print(json.dumps(main(tyro.cli(BenchConfig))))
