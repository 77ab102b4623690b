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

import json
import sys
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
    from benchmarks.every_start import load_finished, reload_options, seed_config
    from benchmarks.heldout_common import emit

    args, spec = reload_options(__doc__)
    by_seed = {}
    for seed in args.seeds:
        cfg = seed_config(spec, args, seed)
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
