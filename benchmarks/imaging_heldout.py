"""Medical-imaging held-out-clinic benchmark: ``fml run medical_imaging`` end to end, then onboarding.

Prints the held-out table of the evaluation protocol (AUROC mean and 95% interval by method, shots and
adaptation steps) pooled over all test clinics, over the clinics with a protocol seen in training and
those with an unseen protocol (``-inverted`` / ``-low_dose`` in the id), and for EVERY test clinic; the
PAIRED differences against the tuned ``fedavg+ft`` baseline (same support draws) per clinic and pooled;
balanced accuracy at the same cells; the adaptation settings chosen on validation clinics; and the wall
times of meta-training (per algorithm) and of onboarding one clinic. The LAST line is the JSON of
BENCHMARKS.md's vertical format (each row also says which clinics it pools).

Onboarding uses a held-out test clinic (default: the unseen-protocol one) exported to a temporary
MedMNIST-format ``.npz``, read back through ``fml onboard``'s code path with the registered model.
MLflow goes to a temporary store unless ``--store`` names one, so the benchmark never moves the
``champion`` alias of a real registry.

    PYTHONPATH=. python benchmarks/imaging_heldout.py --preset quick
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import tyro

UNSEEN = ("-inverted", "-low_dose")


@dataclass
class BenchConfig:
    """Imaging held-out benchmark."""

    preset: str = "quick"
    """Preset of verticals/medical_imaging/presets (quick or full)."""
    seed: int = 0
    """Seed of the whole run (clinics, rounds, draws)."""
    store: Optional[str] = None
    """MLflow tracking URI (default: a temporary SQLite store, deleted afterwards)."""
    output_dir: str = "fml-output/bench-imaging"
    """Tables, plots and checkpoints of the run."""
    onboard_site: Optional[str] = None
    """Test clinic onboarded after the run (default: the last test clinic, the unseen-protocol one)."""
    threads: int = 2
    """torch threads (BENCHMARKS.md figures use 2; use 1 on a machine shared with other jobs)."""
    rounds: Optional[int] = None
    """Override the preset's federated rounds (None: the preset's)."""
    draws: Optional[int] = None
    """Override the preset's support draws per (clinic, shots) (None: the preset's)."""


def group_of(site: str) -> str:
    return "unseen-protocol" if site.endswith(UNSEEN) else "seen-protocol"


def pooled(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and 95% interval per (clinics, method, shots, steps): all, by protocol group, and per clinic."""
    from core.metrics import mean_ci95

    sub = rows[rows["metric"] == metric].copy()
    sub["group"] = sub["site"].map(group_of)
    parts = [("all", sub), *sub.groupby("group"), *sub.groupby("site")]
    out = []
    for clinics, part in parts:
        for (method, shots, steps), grp in part.groupby(["method", "shots", "steps"]):
            m, lo, hi = mean_ci95(grp["value"].tolist())
            out.append({"clinics": clinics, "method": method, "shots": int(shots), "steps": int(steps),
                        "mean": m, "ci95": [lo, hi], "n": len(grp)})
    return pd.DataFrame.from_records(out)


def paired(rows: pd.DataFrame, metric: str, baseline: str = "fedavg+ft") -> pd.DataFrame:
    """Each FML algorithm minus the tuned baseline on the SAME draws: pooled, by group, per clinic."""
    from core.metrics import mean_ci95

    sub = rows[rows["metric"] == metric]
    keys = ["site", "shots", "steps", "draw"]
    base = sub[sub["method"] == baseline].set_index(keys)["value"]
    out = []
    for method in sorted(set(sub["method"]) - {baseline, "fedavg", "local"}):
        diff = (sub[sub["method"] == method].set_index(keys)["value"] - base).dropna().reset_index()
        diff["group"] = diff["site"].map(group_of)
        for clinics, part in [("all", diff), *diff.groupby("group"), *diff.groupby("site")]:
            for (shots, steps), grp in part.groupby(["shots", "steps"]):
                m, lo, hi = mean_ci95(grp["value"].tolist())
                out.append({"clinics": clinics, "method": method, "shots": int(shots), "steps": int(steps),
                            "mean_diff": m, "ci95": [lo, hi],
                            "diff": f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" + ("*" if lo > 0 or hi < 0 else "")})
    return pd.DataFrame.from_records(out)


def table(frame: pd.DataFrame) -> pd.DataFrame:
    cells = frame.assign(cell=frame.apply(lambda r: f"{r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
                                          axis=1))
    return cells.pivot_table(index=["clinics", "method", "shots"], columns="steps", values="cell",
                             aggfunc="first").reset_index()


def export_clinic(site, path: Path) -> Path:
    """A clinic's (already acquired) images as a MedMNIST-format .npz (uint8, split ``train``)."""
    x = (site.x.clamp(0, 1) * 255).round().byte().numpy()
    x = x[:, 0] if x.shape[1] == 1 else np.transpose(x, (0, 2, 3, 1))
    np.savez(path, train_images=x, train_labels=site.y.numpy().reshape(-1, 1).astype(np.uint8))
    return path


def main(cfg: BenchConfig) -> dict:
    import torch

    torch.set_num_threads(cfg.threads)
    tmp = tempfile.TemporaryDirectory(prefix="fml-bench-imaging-")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.store or f"sqlite:///{Path(tmp.name) / 'mlflow.db'}"
    os.environ.setdefault("FML_HOME", tmp.name)
    import verticals
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.onboard import onboard
    from pipelines.run import run_pipeline

    # 1. the pipeline, end to end
    verticals.load_all()
    spec = VERTICALS.get("medical_imaging")
    run_cfg = load_preset(spec, cfg.preset)
    run_cfg.seed, run_cfg.output_dir = cfg.seed, cfg.output_dir
    run_cfg.tracking.experiment = "fml-medical_imaging-benchmark"
    if cfg.rounds is not None:
        run_cfg.fed.rounds = cfg.rounds
    if cfg.draws is not None:
        run_cfg.eval.draws = cfg.draws
    start = time.perf_counter()
    result = run_pipeline(spec, run_cfg, progress=False)
    pipeline_seconds = time.perf_counter() - start
    # 2. onboarding one held-out clinic from the registered meta-initialization
    problem = spec.prepare(run_cfg.data, run_cfg.seed)
    site_id = cfg.onboard_site or problem.federation.roles["test"][-1]
    npz = export_clinic(problem.federation.sites[site_id], Path(tmp.name) / f"{site_id}.npz")
    start = time.perf_counter()
    onboarded = onboard(spec, data=str(npz), site_id=site_id, seed=cfg.seed, overrides={"splits": ["train"]})
    onboard_call_seconds = time.perf_counter() - start
    # 3. tables
    rows = pd.read_parquet(result.output_dir / "evaluation_rows.parquet")
    summary = pooled(rows, "auroc")
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 20)
    pd.set_option("display.max_rows", 500)
    print(f"\nHeld-out AUROC [95% CI] by adaptation steps (preset {cfg.preset}, seed {cfg.seed})")
    print(table(summary).to_string(index=False))
    diffs = paired(rows, "auroc")
    if not diffs.empty:
        print("\nPaired AUROC difference vs tuned fedavg+ft (same draws; * = interval excludes 0)")
        print(diffs.pivot_table(index=["clinics", "method", "shots"], columns="steps", values="diff",
                                aggfunc="first").reset_index().to_string(index=False))
    bacc = pooled(rows, "balanced_accuracy")
    print("\nBalanced accuracy (threshold chosen on the support set) [95% CI]")
    print(table(bacc[bacc["clinics"].isin(["all", "seen-protocol", "unseen-protocol"])]).to_string(index=False))
    print("\nAdaptation settings chosen on validation clinics")
    chosen = result.selection[result.selection["chosen"]] if not result.selection.empty else result.selection
    print(chosen.to_string(index=False))
    train = {k: round(v, 2) for k, v in result.train_seconds.items()}
    print(f"\nwall times: meta-training {train} s; whole pipeline {pipeline_seconds:.1f} s; onboarding clinic "
          f"{site_id} (adapt + score) {onboarded.seconds:.2f} s, whole onboard call (registry load, data, "
          f"logging) {onboard_call_seconds:.1f} s; onboarding AUROC {onboarded.before.get('auroc', float('nan')):.3f}"
          f" -> {onboarded.after.get('auroc', float('nan')):.3f}; best on validation: {result.best_algorithm}")
    out = {"vertical": "medical_imaging", "preset": cfg.preset, "rounds": run_cfg.fed.rounds,
           "draws": run_cfg.eval.draws, "train_seconds": train,
           "pipeline_seconds": round(pipeline_seconds, 2), "onboard_seconds": round(onboarded.seconds, 3),
           "headline_metric": "auroc",
           "rows": [{"method": r["method"], "shots": r["shots"], "steps": r["steps"], "clinics": r["clinics"],
                     "mean": round(r["mean"], 4), "ci95": [round(r["ci95"][0], 4), round(r["ci95"][1], 4)]}
                    for _, r in summary.iterrows()],
           "paired_vs_fedavg_ft": [{"method": r["method"], "shots": r["shots"], "steps": r["steps"],
                                    "clinics": r["clinics"], "mean_diff": round(r["mean_diff"], 4),
                                    "ci95": [round(r["ci95"][0], 4), round(r["ci95"][1], 4)]}
                                   for _, r in diffs.iterrows()] if not diffs.empty else []}
    tmp.cleanup()
    return out


if __name__ == "__main__":
    print(json.dumps(main(tyro.cli(BenchConfig))))
