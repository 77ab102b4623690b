"""Fraud held-out-institution benchmark: ``fml run fraud`` end to end, then onboarding of one institution.

Prints, for every test institution and for all of them pooled, the held-out PR-AUC (average precision,
mean and 95% interval over support draws) by method, shots (k frauds + k non-frauds) and adaptation
steps, beside the institution's fraud base rate and the NON-federated pooled gradient-boosting reference;
then the paired differences against the tuned ``fedavg+ft`` baseline on the same draws, ROC-AUC and
recall at 1% FPR at each method's validation-chosen steps, and the wall times of meta-training and of
onboarding one institution (adapt + score, and the whole ``onboard`` call).
The LAST line is the JSON of BENCHMARKS.md's vertical format (each row also names its ``site``; ``ALL``
pools the test institutions).

MLflow goes to a temporary store unless ``--store`` names one, so the benchmark never moves the
``champion`` alias of a real registry. The onboarded institution's rows are written to a temporary CSV
(never into the repository).

    PYTHONPATH=. python benchmarks/fraud_heldout.py --preset full
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_common import (ShortenableFlags, emit, parse_flags, run_heldout_pipeline, seeds_json, temporary_store,  # noqa: E402
                            timed_onboard, timing_json)
from heldout_tables import json_paired, json_rows, print_site_report  # noqa: E402

HEADLINE = "average_precision"


@dataclass
class BenchConfig(ShortenableFlags):
    """Fraud held-out benchmark."""

    preset: str = "full"
    output_dir: str = "fml-output/bench-fraud"
    onboard_site: str = "Saab"
    """Institution whose rows are onboarded after the run (read from the run's data source)."""


def base_rates(rows: pd.DataFrame) -> pd.DataFrame:
    sub = rows[(rows["metric"] == "base_rate") & (rows["method"] == "fedavg")]
    return sub.groupby(["site", "shots"])["value"].mean().unstack("shots").round(4)


def onboard_file(data_cfg, site: str, folder: Path) -> Path:
    """The rows of institution ``site`` from the run's data source, as a CSV in ``folder``."""
    from data_adapters.fraud_claims import resolve_claims
    from data_adapters.sources import read_table
    from data_adapters.tabular_io import category_strings

    source, _ = resolve_claims(data_cfg)
    frame = source if isinstance(source, pd.DataFrame) else read_table(source)
    keep = category_strings(frame[data_cfg.site_column]) == site
    if not keep.any():
        raise ValueError(f"no rows of institution {site!r} in column {data_cfg.site_column!r}")
    path = folder / f"{site}.csv"
    frame[keep.to_numpy()].to_csv(path, index=False)
    return path


def main(cfg: BenchConfig) -> dict:
    tmp = temporary_store("fraud", cfg.store)
    # 1. the pipeline, end to end
    run = run_heldout_pipeline("fraud", cfg)
    # 2. onboarding one institution from the registered meta-initialization
    path = onboard_file(run.run_cfg.data, cfg.onboard_site, Path(tmp.name))
    onboarded, onboard_call_seconds = timed_onboard(run.spec, data=str(path), site_id=None, seed=cfg.seeds[-1])
    # 3. tables
    rows = run.rows
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 20)
    print(f"\nFraud base rate of the scored rows (site x shots; PR-AUC of a random scorer)\n{base_rates(rows)}")
    summary, paired = print_site_report(
        rows, run.chosen, HEADLINE, digits=3, sites="institutions", others=("roc_auc", "recall_at_1pct_fpr"),
        heading=lambda site: f"Held-out PR-AUC [95% CI] by adaptation steps: {site} "
                             f"(preset {cfg.preset}, seeds {cfg.seeds})",
        paired_heading="Paired PR-AUC difference vs tuned fedavg+ft (same draws)")
    train = run.train_seconds
    print(f"\nwall times: meta-training {train} s; whole pipeline {run.seconds:.1f} s; onboarding "
          f"{onboarded.site_id} (choice + adapt + score) {onboarded.seconds:.3f} s, whole onboard call "
          f"{onboard_call_seconds:.1f} s; registered default by seed: {run.best_by_seed}")
    out = {"vertical": "fraud", "preset": cfg.preset, **seeds_json(run, cfg), **timing_json(run, onboarded, onboard_call_seconds),
           "headline_metric": HEADLINE, "rows": json_rows(summary, "site", digits=4),
           "paired_vs_fedavg_ft": json_paired(paired, "site", digits=4)}
    tmp.cleanup()
    return out


if __name__ == "__main__":
    flags = parse_flags(BenchConfig)
    emit(main(flags), flags)
