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

import json
import sys
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_tables import cell_table, summarize  # noqa: E402

HEADLINE = "average_precision"


@dataclass
class BenchConfig:
    """Fraud held-out benchmark."""

    preset: str = "full"
    """Preset of verticals/fraud/presets (quick or full)."""
    seed: int = 0
    """Seed of the whole run (roles, rounds, draws)."""
    rounds: Optional[int] = None
    """Override the preset's federated rounds."""
    draws: Optional[int] = None
    """Override the preset's support draws per (site, shots)."""
    store: Optional[str] = None
    """MLflow tracking URI (default: a temporary SQLite store, deleted afterwards)."""
    output_dir: str = "fml-output/bench-fraud"
    """Tables, plots and checkpoints of the run."""
    onboard_site: str = "Saab"
    """Institution whose rows are onboarded after the run (read from the run's data source)."""
    threads: int = 1
    """torch threads (the MLP is tiny: one thread is fastest, and robust on a shared machine)."""


def base_rates(rows: pd.DataFrame) -> pd.DataFrame:
    sub = rows[(rows["metric"] == "base_rate") & (rows["method"] == "fedavg")]
    return sub.groupby(["site", "shots"])["value"].mean().unstack("shots").round(4)


def onboard_file(data_cfg, site: str, folder: Path) -> Path:
    """The rows of institution ``site`` from the run's data source, as a CSV in ``folder``."""
    from data_adapters.fraud_claims import resolve_claims
    from data_adapters.tabular_io import category_strings, read_table

    source, _ = resolve_claims(data_cfg)
    frame = source if isinstance(source, pd.DataFrame) else read_table(source)
    keep = category_strings(frame[data_cfg.site_column]) == site
    if not keep.any():
        raise ValueError(f"no rows of institution {site!r} in column {data_cfg.site_column!r}")
    path = folder / f"{site}.csv"
    frame[keep.to_numpy()].to_csv(path, index=False)
    return path


def main(cfg: BenchConfig) -> dict:
    import torch

    torch.set_num_threads(cfg.threads)
    tmp = tempfile.TemporaryDirectory(prefix="fml-bench-fraud-")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.store or f"sqlite:///{Path(tmp.name) / 'mlflow.db'}"
    os.environ.setdefault("FML_HOME", tmp.name)
    import verticals
    from core.evaluation import paired_differences
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.onboard import onboard
    from pipelines.run import run_pipeline

    # 1. the pipeline, end to end
    verticals.load_all()
    spec = VERTICALS.get("fraud")
    run_cfg = load_preset(spec, cfg.preset)
    run_cfg.seed, run_cfg.output_dir = cfg.seed, cfg.output_dir
    if cfg.rounds is not None:
        run_cfg.fed.rounds = cfg.rounds
    if cfg.draws is not None:
        run_cfg.eval.draws = cfg.draws
    run_cfg.tracking.experiment = "fml-fraud-benchmark"
    start = time.perf_counter()
    result = run_pipeline(spec, run_cfg, progress=False)
    pipeline_seconds = time.perf_counter() - start
    # 2. onboarding one institution from the registered meta-initialization
    path = onboard_file(run_cfg.data, cfg.onboard_site, Path(tmp.name))
    start = time.perf_counter()
    onboarded = onboard(spec, data=str(path), site_id=None, seed=cfg.seed)
    onboard_call_seconds = time.perf_counter() - start
    # 3. tables
    rows = pd.read_parquet(result.output_dir / "evaluation_rows.parquet")
    summary = summarize(rows, HEADLINE)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 20)
    print(f"\nFraud base rate of the scored rows (site x shots; PR-AUC of a random scorer)\n{base_rates(rows)}")
    for site in ["ALL", *sorted(set(rows["site"]))]:
        print(f"\nHeld-out PR-AUC [95% CI] by adaptation steps: {site} (preset {cfg.preset}, seed {cfg.seed})")
        print(cell_table(summary[summary["site"] == site]).to_string(index=False))
    paired = paired_differences(rows, HEADLINE)
    if not paired.empty:
        paired["diff"] = paired.apply(lambda r: f"{r['mean_diff']:+.3f} [{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}]",
                                      axis=1)
        print("\nPaired PR-AUC difference vs tuned fedavg+ft (same draws)")
        print(paired.pivot_table(index=["site", "method", "shots"], columns="steps", values="diff",
                                 aggfunc="first").reset_index().to_string(index=False))
    chosen = result.selection[result.selection["chosen"]] if not result.selection.empty else result.selection
    print("\nAdaptation settings chosen on validation institutions")
    print(chosen.to_string(index=False))
    for metric in ("roc_auc", "recall_at_1pct_fpr"):
        other = summarize(rows, metric)
        print(f"\n{metric} [95% CI], all test institutions")
        print(cell_table(other[other["site"] == "ALL"]).to_string(index=False))
    train = {k: round(v, 2) for k, v in result.train_seconds.items()}
    print(f"\nwall times: meta-training {train} s; whole pipeline {pipeline_seconds:.1f} s; onboarding "
          f"{onboarded.site_id} (adapt + score) {onboarded.seconds:.3f} s, whole onboard call "
          f"{onboard_call_seconds:.1f} s; best on validation: {result.best_algorithm}")
    out = {"vertical": "fraud", "preset": cfg.preset, "train_seconds": round(sum(train.values()), 2),
           "train_seconds_by_algorithm": train, "pipeline_seconds": round(pipeline_seconds, 2),
           "onboard_seconds": round(onboarded.seconds, 3), "onboard_call_seconds": round(onboard_call_seconds, 2),
           "headline_metric": HEADLINE,
           "rows": [{"method": r["method"], "shots": r["shots"], "steps": r["steps"], "site": r["site"],
                     "mean": round(r["mean"], 4), "ci95": [round(r["ci95"][0], 4), round(r["ci95"][1], 4)]}
                    for _, r in summary.iterrows()]}
    tmp.cleanup()
    return out


if __name__ == "__main__":
    print(json.dumps(main(tyro.cli(BenchConfig))))
