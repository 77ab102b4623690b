"""Digits held-out-task benchmark (the demo, R1's data): ``fml run digits`` end to end, then onboarding.

Prints, for every test site (a fresh 5-way task over digits the training sites also drew from, with its own label
order) and for all of them pooled, the held-out accuracy (mean and 95% interval over support draws) by method,
shots (k per class) and adaptation steps; the paired differences against the tuned ``fedavg+ft`` baseline on the
same draws; the settings chosen on validation sites; and the wall times of meta-training and of onboarding one
generated site. The only multi-class vertical: where the per-site choice and the divergence guard use what a
classifier of several classes needs (``core.choice.wrong_class_probability``, ``core.guard``'s wrong-row count).
The LAST line is the JSON of BENCHMARKS.md's vertical format (each row also names its ``site``; ``ALL`` pools
the test sites).

MLflow goes to a temporary store unless ``--store`` names one, so the benchmark never moves the ``champion``
alias of a real registry.

    python benchmarks/digits_heldout.py --preset quick --seeds 0 1 2
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

HEADLINE = "accuracy"


@dataclass
class BenchConfig(ShortenableFlags):
    """Digits held-out benchmark."""

    preset: str = "quick"
    output_dir: str = "fml-output/bench-digits"
    onboard_site: str = "bench-digits"
    """Id of the generated site onboarded after the run (its classes are drawn from the id)."""


def main(cfg: BenchConfig) -> dict:
    tmp = temporary_store("digits", cfg.store)
    run = run_heldout_pipeline("digits", cfg)
    onboarded, onboard_call_seconds = timed_onboard(run.spec, data=None, site_id=cfg.onboard_site, seed=cfg.seeds[-1])
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 20)
    summary, paired = print_site_report(
        run.rows, run.chosen, HEADLINE, digits=3, sites="sites", others=("loss",),
        heading=lambda site: f"Held-out accuracy [95% CI] by adaptation steps: {site} (preset {cfg.preset}, seeds {cfg.seeds})",
        paired_heading="Paired accuracy difference vs tuned fedavg+ft (same draws)")
    print(f"\nwall times: meta-training {run.train_seconds} s; whole pipeline {run.seconds:.1f} s; onboarding "
          f"{onboarded.site_id} (choice + adapt + score) {onboarded.seconds:.3f} s, whole onboard call "
          f"{onboard_call_seconds:.1f} s; registered default by seed: {run.best_by_seed}")
    out = {"vertical": "digits", "preset": cfg.preset, **seeds_json(run, cfg),
           **timing_json(run, onboarded, onboard_call_seconds), "headline_metric": HEADLINE,
           "rows": json_rows(summary, "site", digits=4), "paired_vs_fedavg_ft": json_paired(paired, "site", digits=4)}
    tmp.cleanup()
    return out


if __name__ == "__main__":
    flags = parse_flags(BenchConfig)
    emit(main(flags), flags)
