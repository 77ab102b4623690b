"""Maintenance held-out-operator benchmark: ``fml run maintenance`` end to end, then onboarding of a new fleet.

Prints, for every test operator and for all of them pooled, the held-out last-window RUL RMSE (mean
and 95% interval over support draws; lower is better) by method, shots (labelled units) and
adaptation steps; the paired differences against the tuned ``fedavg+ft`` baseline on the same draws;
the adaptation settings chosen on validation operators; RMSE over all windows and the NASA score;
and the wall times of meta-training and of onboarding one new fleet (adapt + score, and the whole
``onboard`` call). The LAST line is the JSON of BENCHMARKS.md's vertical format (each row also names
its ``site``; ``ALL`` pools the test operators).

Onboarding reads the subset's official ``test_FD00x.txt`` + ``RUL_FD00x.txt`` (engines the run never
saw, unless ``include_test_file`` put them into operators; then a held-out TEST operator's rows are
exported to a temporary CSV instead). Without the real files, the GENERATED stand-in is used for both. The
official fleet, which no seed's run trained on, is also onboarded with EACH seed's model (``onboard_by_seed``),
and with ``--onboard-candidates`` from each named start as well.

MLflow goes to a temporary store unless ``--store`` names one, so the benchmark never moves the
``champion`` alias of a real registry.

    PYTHONPATH=. python benchmarks/maintenance_heldout.py --preset full
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_common import ShortenableFlags, emit, parse_flags, run_heldout_pipeline, seeds_json, timed_onboard, timing_json  # noqa: E402
from heldout_tables import json_paired, json_rows, print_site_report  # noqa: E402

HEADLINE = "rmse_last"


@dataclass
class BenchConfig(ShortenableFlags):
    """Maintenance held-out benchmark."""

    preset: str = "full"
    output_dir: str = "fml-output/bench-maintenance"
    onboard_shots: Optional[int] = None
    """Labelled units the onboarded fleet adapts on (default: the registered setting)."""
    onboard_candidates: list[str] = dataclasses.field(default_factory=list)
    """Also onboard the official fleet with each seed's model FORCED to start from each of these (``fml onboard
    --candidate``, e.g. ``ensemble fedavg+ft``), on the same draw as its per-site choice (``onboard_by_seed``)."""


def onboarding_files(data_cfg, seed: int, test_sites: list[str], folder: Path) -> tuple[Path, Optional[Path], str]:
    """``(data, rul, what)``: the official test file + RUL file, or a held-out test operator as a CSV table."""
    from data_adapters.cmapss import default_data_dir, operator_frames
    from data_adapters.cmapss_sim import generate_cmapss, write_cmapss_files

    src = Path(data_cfg.data_dir) if data_cfg.data_dir else default_data_dir()
    if not data_cfg.include_test_file and data_cfg.path is None:
        test, rul = src / f"test_{data_cfg.subset}.txt", src / f"RUL_{data_cfg.subset}.txt"
        if test.is_file() and rul.is_file():
            return test, rul, f"official {test.name} + {rul.name} (engines never trained on)"
        _, gen_test, gen_rul = generate_cmapss(100, 100, seed=12345)
        write_cmapss_files(folder, "GEN", None, gen_test, gen_rul)
        return folder / "test_GEN.txt", folder / "RUL_GEN.txt", "GENERATED test file (real files absent)"
    site = test_sites[0]
    frame = in_service_view(operator_frames(data_cfg, seed)[site], data_cfg.window, seed)
    path = folder / f"{site}.csv"
    frame.rename(columns={"cycle": "time"}).to_csv(path, index=False)
    return path, None, f"held-out test operator {site} exported as a table (units cut in service)"


def in_service_view(frame: pd.DataFrame, window: int, seed: int) -> pd.DataFrame:
    """Cut each run-to-failure unit at a seeded random cycle (>= ``window``), as C-MAPSS's test set does;
    the table keeps the exact RUL column. Settings and bookkeeping columns are dropped."""
    import numpy as np

    rng = np.random.default_rng(seed)
    parts = []
    for _, unit in frame.groupby("unit", sort=False):
        keep = len(unit) if bool(unit.get("truncated", pd.Series([False])).iloc[0]) else \
            int(rng.integers(min(window, len(unit)), len(unit) + 1))
        parts.append(unit.iloc[:keep])
    out = pd.concat(parts, ignore_index=True)
    return out.drop(columns=[c for c in out.columns if c.startswith("setting") or c == "truncated"])


def precreate_experiments(home: Path) -> None:
    """Create the benchmark's experiments with artifact folders under ``home``: ``mlflow.set_tracking_uri``
    exports ``MLFLOW_TRACKING_URI``, after which ``core.tracking.ensure_experiment`` leaves the artifact
    location to MLflow's default, ``./mlruns`` in the working directory."""
    from mlflow.tracking import MlflowClient

    from core import tracking

    tracking.setup_tracking()
    client = MlflowClient()
    for name in ("fml-maintenance-benchmark", "fml-maintenance-onboarding"):
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=(home / "artifacts" / name).resolve().as_uri())


def main(cfg: BenchConfig) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="fml-bench-maintenance-")
    # not heldout_common.temporary_store: the default store here is an embedded one whose ARTIFACTS also
    # stay in the temporary folder, rather than in ./mlruns (see precreate_experiments)
    if cfg.store:
        os.environ["MLFLOW_TRACKING_URI"] = cfg.store
    else:  # an embedded store (database AND artifacts) inside the temporary folder
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ["FML_HOME"] = tmp.name
        precreate_experiments(Path(tmp.name))
    # 1. the pipeline, end to end
    run = run_heldout_pipeline("maintenance", cfg)
    rows = run.rows
    # 2. onboarding one new fleet from the registered meta-initialization
    data, rul, what = onboarding_files(run.run_cfg.data, cfg.seeds[-1], sorted(set(rows["site"])), Path(tmp.name))
    overrides = {"rul_path": str(rul)} if rul else {"site_column": "site", "unit_column": "unit",
                                                    "time_column": "time", "target_column": "rul"}
    onboarded, onboard_call_seconds = timed_onboard(run.spec, data=str(data), site_id=None, seed=cfg.seeds[-1],
                                                    shots=cfg.onboard_shots, overrides=overrides)
    from pipelines.onboard import onboard

    by_seed = {}
    if rul is not None:  # the official fleet: no seed's run trained on it, so every seed's model onboards it
        for seed in cfg.seeds:
            fleet = onboard(run.spec, data=str(data), site_id=None, seed=seed, shots=cfg.onboard_shots,
                            overrides=overrides, model_uri=run.model_uri_by_seed[seed])
            by_seed[seed] = {"before": round(fleet.before[HEADLINE], 3), "after": round(fleet.after[HEADLINE], 3),
                             "start": fleet.choice.name}
            for name in cfg.onboard_candidates:
                forced = onboard(run.spec, data=str(data), site_id=None, seed=seed, shots=cfg.onboard_shots,
                                 overrides=overrides, model_uri=run.model_uri_by_seed[seed], candidate=name)
                by_seed[seed].setdefault("candidates", {})[name] = {"before": round(forced.before[HEADLINE], 3),
                                                                    "after": round(forced.after[HEADLINE], 3)}
    # 3. tables
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 20)
    summary, paired = print_site_report(
        rows, run.chosen, HEADLINE, digits=2, sites="operators", others=("rmse_all", "nasa_per_unit"),
        heading=lambda site: f"Held-out last-window RUL RMSE [95% CI] by adaptation steps: {site} "
                             f"(preset {cfg.preset}, seeds {cfg.seeds}; lower is better)",
        paired_heading="Paired RMSE difference vs tuned fedavg+ft (same draws; negative = better than fedavg+ft)")
    train = run.train_seconds
    print(f"\nonboarding: {what}: {onboarded.site_id}, before {onboarded.before[HEADLINE]:.2f} -> after "
          f"{onboarded.after[HEADLINE]:.2f} last-window RMSE on {int(onboarded.after['units'])} units (mean signed "
          f"error {onboarded.before['bias_last']:+.2f} -> {onboarded.after['bias_last']:+.2f} cycles, + = late); "
          f"start {onboarded.choice.name}")
    if by_seed:
        afters = [v["after"] for v in by_seed.values()]
        print("onboarding the same fleet with each seed's model (before -> after): " + "; ".join(
            f"seed {k} {v['before']:.2f} -> {v['after']:.2f} ({v['start']})" for k, v in by_seed.items())
            + f"; mean after {sum(afters) / len(afters):.2f}")
        for name in cfg.onboard_candidates:
            forced = [v["candidates"][name]["after"] for v in by_seed.values()]
            print(f"  started from {name}: " + " / ".join(f"{a:.2f}" for a in forced)
                  + f" after; mean {sum(forced) / len(forced):.2f}")
    print(f"wall times: meta-training {train} s; whole pipeline {run.seconds:.1f} s; onboarding "
          f"(choice + adapt + score) {onboarded.seconds:.3f} s, whole onboard call {onboard_call_seconds:.1f} s; "
          f"registered default by seed: {run.best_by_seed}")
    out = {"vertical": "maintenance", "preset": cfg.preset, **seeds_json(run, cfg), **timing_json(run, onboarded, onboard_call_seconds),
           "onboard": {"data": what, "before": round(onboarded.before[HEADLINE], 3),
                       "after": round(onboarded.after[HEADLINE], 3), "start": onboarded.choice.name,
                       "bias_before": round(onboarded.before["bias_last"], 3),
                       "bias_after": round(onboarded.after["bias_last"], 3)},
           **({"onboard_by_seed": {str(k): v for k, v in by_seed.items()}} if by_seed else {}),
           "headline_metric": HEADLINE, "rows": json_rows(summary, "site", digits=3),
           "paired_vs_fedavg_ft": json_paired(paired, "site", digits=3)}
    tmp.cleanup()
    return out


if __name__ == "__main__":
    flags = parse_flags(BenchConfig)
    emit(main(flags), flags)
