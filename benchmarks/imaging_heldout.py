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

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_common import ShortenableFlags, emit, parse_flags, run_heldout_pipeline, seeds_json, temporary_store, timed_onboard  # noqa: E402
from heldout_tables import (by_steps, cell_table, diff_cells, json_paired, json_rows,  # noqa: E402
                            paired_by_pool, summarize)

UNSEEN = ("-inverted", "-low_dose")


def group_of(site: str) -> str:
    return "unseen-protocol" if site.endswith(UNSEEN) else "seen-protocol"


# the tables pool all test clinics, each protocol group and each clinic
POOLS = {"pool_column": "clinics", "everything": "all", "group_of": group_of, "per_site": True}
TABLE_INDEX = ("clinics", "method", "shots")


@dataclass
class BenchConfig(ShortenableFlags):
    """Imaging held-out benchmark."""

    output_dir: str = "fml-output/bench-imaging"
    onboard_site: Optional[str] = None
    """Test clinic onboarded after the run (default: the last test clinic, the unseen-protocol one)."""
    onboard_shots: int = 10
    """Images per class the onboarded clinic adapts on (and chooses its starting point with)."""
    threads: int = 2
    """torch threads (BENCHMARKS.md figures and the JSONs in benchmarks/results use 2; use 1 on a machine shared
    with other jobs: two OpenMP threads spin against any other process on 2 cores)."""


def export_clinic(site, path: Path) -> Path:
    """A clinic's (already acquired) images as a MedMNIST-format .npz (uint8, split ``train``)."""
    x = (site.x.clamp(0, 1) * 255).round().byte().numpy()
    x = x[:, 0] if x.shape[1] == 1 else np.transpose(x, (0, 2, 3, 1))
    np.savez(path, train_images=x, train_labels=site.y.numpy().reshape(-1, 1).astype(np.uint8))
    return path


def main(cfg: BenchConfig) -> dict:
    tmp = temporary_store("imaging", cfg.store)
    # 1. the pipeline, end to end
    run = run_heldout_pipeline("medical_imaging", cfg)
    # 2. onboarding one held-out clinic from the registered meta-initialization
    problem = run.spec.build(run.run_cfg.data, run.run_cfg.seed)
    site_id = cfg.onboard_site or problem.federation.roles["test"][-1]
    npz = export_clinic(problem.federation.sites[site_id], Path(tmp.name) / f"{site_id}.npz")
    onboarded, onboard_call_seconds = timed_onboard(run.spec, data=str(npz), site_id=site_id, seed=cfg.seeds[-1],
                                                    shots=cfg.onboard_shots, overrides={"splits": ["train"]})
    # 3. tables (a missing AUROC, e.g. a one-class query set, keeps its pool's cell NaN: skip_nan=False)
    rows = run.rows
    summary = summarize(rows, "auroc", **POOLS, skip_nan=False)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 20)
    pd.set_option("display.max_rows", 500)
    print(f"\nHeld-out AUROC [95% CI] by adaptation steps (preset {cfg.preset}, seeds {cfg.seeds})")
    print(cell_table(summary, index=TABLE_INDEX).to_string(index=False))
    diffs = paired_by_pool(rows, "auroc", **POOLS)
    if not diffs.empty:
        diffs["diff"] = diff_cells(diffs, digits=3, star=True)
        print("\nPaired AUROC difference vs tuned fedavg+ft (same draws; * = interval excludes 0)")
        print(by_steps(diffs, TABLE_INDEX, "diff").to_string(index=False))
    bacc = summarize(rows, "balanced_accuracy", **POOLS, skip_nan=False)
    print("\nBalanced accuracy (threshold chosen on the support set) [95% CI]")
    print(cell_table(bacc[bacc["clinics"].isin(["all", "seen-protocol", "unseen-protocol"])],
                     index=TABLE_INDEX).to_string(index=False))
    print("\nAdaptation settings chosen on validation clinics")
    print(run.chosen.to_string(index=False))
    train = run.train_seconds
    print(f"\nwall times: meta-training {train} s; whole pipeline {run.seconds:.1f} s; onboarding clinic "
          f"{site_id} with {cfg.onboard_shots} shots (choice + adapt + score) {onboarded.seconds:.2f} s, whole onboard call (registry load, data, "
          f"logging) {onboard_call_seconds:.1f} s; onboarding AUROC {onboarded.before.get('auroc', float('nan')):.3f}"
          f" -> {onboarded.after.get('auroc', float('nan')):.3f}; registered default by seed: {run.best_by_seed}")
    out = {"vertical": "medical_imaging", "preset": cfg.preset, **seeds_json(run, cfg), "rounds": run.run_cfg.fed.rounds,
           "draws": run.run_cfg.eval.draws, "train_seconds": train,
           "pipeline_seconds": round(run.seconds, 2), "onboard_seconds": round(onboarded.seconds, 3),
           "headline_metric": "auroc", "rows": json_rows(summary, "clinics", digits=4),
           "paired_vs_fedavg_ft": json_paired(diffs, "clinics", digits=4)}
    tmp.cleanup()
    return out


if __name__ == "__main__":
    flags = parse_flags(BenchConfig)
    emit(main(flags), flags)
