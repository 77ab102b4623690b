"""The maintenance `oracle no shift` floor scored at a NO-simulation run's evaluation cut points: a diagnostic.

A run's test engines are scored at one evaluation window each (a seeded random cut for run-to-failure engines), and
a simulated build draws those cuts after its simulation, so a ``data.simulate=false`` run of the same seed scores
the same engines at OTHER windows, and comparing it with a simulated line's oracle row mixes two sets of windows.
This script fits the oracle exactly as the pipeline does and scores it, with the same draws, at both sets of cuts.
(Since 2026-12-06 a no-simulation line carries its own oracle row, ``verticals.maintenance.reference``, scored at
its own cuts, which equals this script's ``no_simulation_cuts``; the script remains the floor of the lines recorded
before that.)

    python benchmarks/floor_cut_points.py --seeds 0 1 2

The LAST line is JSON (``--json-out`` also writes it): per seed and k, the oracle's mean last-window RMSE at the
simulated run's cuts (the committed oracle row) and at the no-simulation run's.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_common import by_seed, emit, parse_flags, with_overrides  # noqa: E402


@dataclass
class Flags:
    """Oracle floor at both sets of cut points."""

    preset: str = "full"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    set: list[str] = field(default_factory=list)
    """Run-config overrides (one ``--set``); the run must simulate its operators."""
    threads: int = 1
    json_out: Optional[str] = None


def floors(flags: Flags, seed: int) -> dict[str, dict[str, float]]:
    """``{"simulated_cuts" | "no_simulation_cuts": {k: mean RMSE}}`` of the oracle on the test operators."""
    from core.evaluation import task_generator
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from verticals.maintenance.reference import fit_central, unsimulated_sites

    spec = VERTICALS.get("maintenance")
    run_cfg = with_overrides(load_preset(spec, flags.preset), flags.set)
    problem = spec.build(run_cfg.data, seed)
    plain = unsimulated_sites(run_cfg.data, seed, problem)  # unshifted rows at the simulated build's cuts
    if not plain:
        raise SystemExit("no oracle: the run's sites are not simulated operators of one fleet (data.simulate)")
    unsimulated = spec.build(dataclasses.replace(run_cfg.data, simulate=False), seed)  # a no-simulation run's build
    roles = problem.federation.roles
    fit = fit_central(problem, [plain[s] for s in roles["train"]], [plain[s] for s in roles["validation"]], seed)
    model = problem.make_model()
    out: dict[str, dict[str, float]] = {}
    for name, sites, prob in (("simulated_cuts", plain, problem),
                              ("no_simulation_cuts", unsimulated.federation.sites, unsimulated)):
        out[name] = {}
        for k in run_cfg.eval.shots:
            values = [float(prob.few_shot_task(model, sites[sid], k, task_generator(seed, i, k, d))
                            .score(fit.params)["rmse_last"])
                      for i, sid in enumerate(roles["test"]) for d in range(int(run_cfg.eval.draws))]
            out[name][str(k)] = round(sum(values) / len(values), 3)
    return out


def main(flags: Flags) -> dict:
    seeds = by_seed(flags, floors, lambda r: f"oracle at the simulated run's cuts {r['simulated_cuts']}, at a "
                    f"no-simulation run's cuts {r['no_simulation_cuts']}")
    out = {"benchmark": "floor_cut_points", "preset": flags.preset, "overrides": list(flags.set),
           "seeds": list(flags.seeds), "by_seed": seeds}
    emit(out, flags)
    return out


if __name__ == "__main__":
    main(parse_flags(Flags))
