"""Why a finished run's default start is what it is: each validation site's mean gain over ``fedavg+ft`` per steps count.

A site whose support cannot be split (one example of a class, a robot's rollouts) starts from the default that
``pipelines.registration_choice.validation_default`` picks at each steps count: an FML start only where the
validation SITES show it clearly better (one-sided Wilcoxon over each site's mean gain, p < 0.1). This script
reloads a held-out benchmark's seed folders (the trained models; the step sizes searched again on the validation
sites, deterministic: ``benchmarks/every_start.load_finished``) and prints that evidence, so a default that a test
table shows to be the worse start can be traced to what the validation sites said. No retraining, no test rows.

    python benchmarks/validation_default_evidence.py robotics --preset full --runs fml-output/regenerate/robotics_full
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def evidence(run: Any, higher_is_better: bool, recorded: dict[str, str]) -> dict[str, Any]:
    """Per steps count: each bundle start's per-validation-site mean gain over ``fedavg+ft`` (POSITIVE = better),
    its p-value, and the default the rule gives from them, which must be ``recorded`` (steps -> the default the
    run used, its ``fallback_defaults.json``)."""
    from core.choice import gain_pvalue
    from core.evaluation import BASELINE
    from pipelines.registration_choice import validation_default

    sign = 1.0 if higher_is_better else -1.0
    by_name = {m.name: m for m in run.methods}
    bundle = [by_name[n] for n in run.bundle]
    out: dict[str, Any] = {}
    for steps in sorted(run.default_by_steps):
        base = by_name[BASELINE].validation_draws[steps]
        starts = {}
        for m in bundle:
            if m.name == BASELINE:
                continue
            gains = [sign * (sum(a) - sum(b)) / len(a) for a, b in zip(m.validation_draws[steps], base)]
            starts[m.name] = {"site_gains": [round(g, 4) for g in gains], "pvalue": round(gain_pvalue(gains), 4),
                              "mean_gain": round(sum(gains) / len(gains), 4)}
        default = validation_default(bundle, steps, higher_is_better)[0].name
        if default != recorded.get(str(steps)):
            raise SystemExit(f"steps {steps}: the reloaded evidence gives {default}, the run used "
                             f"{recorded.get(str(steps))} (another machine or torch thread count rounds otherwise: "
                             "rerun where the run ran)")
        out[str(steps)] = {"default": default, "starts": starts}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vertical")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--runs", required=True, type=Path, help="the benchmark's --output-dir (its seed<N> folders)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="+", action="extend", default=[], help="the run's options over the preset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='fml-reload-')}/mlflow.db"
    import torch

    import verticals
    from benchmarks.every_start import load_finished
    from benchmarks.heldout_common import emit, with_overrides
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.process_setup import configure_process

    configure_process()
    torch.set_num_threads(args.threads)
    verticals.load_all()
    spec = VERTICALS.get(args.vertical)
    by_seed = {}
    for seed in args.seeds:
        cfg = with_overrides(load_preset(spec, args.preset), args.set)
        cfg.seed = seed
        folder = args.runs / f"seed{seed}"
        run = load_finished(spec, cfg, folder)
        recorded = json.loads((folder / "fallback_defaults.json").read_text())["default_by_steps"]
        by_seed[str(seed)] = evidence(run, run.problem.higher_is_better, recorded)
        print(f"seed {seed}: bundle {run.bundle}")
        for steps, facts in by_seed[str(seed)].items():
            for name, e in facts["starts"].items():
                gains = " ".join(f"{g:+.3g}" for g in e["site_gains"])
                print(f"  {steps} steps  {name:>10} vs fedavg+ft per validation site: {gains}  "
                      f"(mean {e['mean_gain']:+.3g}, p = {e['pvalue']:.3g})  -> default {facts['default']}")
    emit({"benchmark": "validation_default_evidence", "vertical": args.vertical, "preset": args.preset,
          "seeds": args.seeds, "overrides": args.set, "runs": str(args.runs), "by_seed": by_seed}, args)


if __name__ == "__main__":
    main()
