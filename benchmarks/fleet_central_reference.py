"""How far the maintenance ARCHITECTURE gets on the official FD001 fleet when trained centrally: a diagnostic.

Issue 14 asks the official fleet, onboarded with 5 engines, to reach <= 13.0 last-window RMSE. This script
answers whether the model and training engines a run has can reach it at all: for each seed it builds the run's
operators exactly as ``fml run maintenance`` does (same preset, overrides and seed: same roles), trains the same
architecture CENTRALLY on the training operators' pooled windows (``verticals.maintenance.reference.fit_central``:
Adam, learning rate and stopping step chosen on the validation operators' windows; unsimulated rows when the run
simulates operators), reads the official fleet with that run's preprocessing and scores it unadapted on exactly the
engines onboarding scores (the same 5-engine support draw left out). No federation, no meta-learning, no
adaptation: a reference for the federated numbers of ``benchmarks/fleet_onboarding.py``, not a method.

    python benchmarks/fleet_central_reference.py --seeds 0 1 2 --set data.simulate=false \
        data.include_test_file=false data.units_per_site=6 data.test_sites=3

The LAST line is JSON (``--json-out`` also writes it): per seed the fleet's RMSE, the chosen learning rate and step and
the training engines, with the command and machine. Without the real C-MAPSS files the GENERATED stand-in is used
(``maintenance_heldout.onboarding_files``), and the line says so.
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_common import by_seed, emit, parse_flags, with_overrides  # noqa: E402
from maintenance_heldout import onboarding_files  # noqa: E402

HEADLINE = "rmse_last"


@dataclass
class Flags:
    """Central reference on the official fleet."""

    preset: str = "full"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    set: list[str] = field(default_factory=list)
    """Run-config overrides, as the held-out benchmarks take them (one ``--set``)."""
    shots: int = 5
    """The onboarding support size whose draw is left out of the scored engines."""
    threads: int = 1
    json_out: Optional[str] = None
    """Also write the closing JSON line to this file."""


def fleet_rmse(flags: Flags, seed: int) -> dict:
    import torch

    from core.evaluation import task_generator
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from verticals.maintenance.reference import fit_central, unsimulated_sites

    spec = VERTICALS.get("maintenance")
    run_cfg = with_overrides(load_preset(spec, flags.preset), flags.set)
    if run_cfg.data.include_test_file:
        raise SystemExit("the official fleet is part of the operators with data.include_test_file=true: "
                         "pass --set data.include_test_file=false (and the split, e.g. data.units_per_site=6)")
    problem = spec.build(run_cfg.data, seed)
    sites = problem.federation.sites
    roles = problem.federation.roles
    plain = unsimulated_sites(run_cfg.data, seed, problem) or sites  # the run's own rows when nothing is simulated
    train, val = [plain[s] for s in roles["train"]], [plain[s] for s in roles["validation"]]
    start = time.perf_counter()
    fit = fit_central(problem, train, val, seed)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="fml-fleet-reference-") as folder:
        test, rul, what = onboarding_files(run_cfg.data, seed, [], Path(folder))
        fleet_cfg = dataclasses.replace(run_cfg.data, path=str(test), rul_path=str(rul))
        fleet_problem, fleet = spec.new_site(fleet_cfg, problem.preprocessing, None, [])
    model = fleet_problem.make_model()
    # the draw fml onboard --seed SEED takes (pipelines.onboard): its scored engines, without adapting
    task = fleet_problem.few_shot_task(model, fleet, flags.shots, task_generator(seed, 0, flags.shots, 0))
    scores = task.score(fit.params)
    at_init = task.score({k: v.detach() for k, v in model.named_parameters()})  # an untrained model of the architecture
    units = sum(int(s.groups.unique().numel()) for s in train if s.groups is not None)
    return {"fleet": what, "rmse_last": round(float(scores[HEADLINE]), 3), "scored_units": int(scores.get("units", 0)),
            "rmse_last_at_init": round(float(at_init[HEADLINE]), 3),
            "lr": fit.lr, "step": fit.step, "fit_seconds": round(seconds, 1),
            "train_operators": len(train), "train_units": units, "torch_threads": torch.get_num_threads()}


def main(flags: Flags) -> dict:
    seeds = by_seed(flags, fleet_rmse, lambda r: (
        f"central fit (lr {r['lr']:g}, step {r['step']}) on {r['train_operators']} training operators: official "
        f"fleet {r['rmse_last']:.2f} last-window RMSE on {r['scored_units']} engines (unadapted)"))
    values = [v["rmse_last"] for v in seeds.values()]
    out = {"benchmark": "fleet_central_reference", "preset": flags.preset, "overrides": list(flags.set),
           "seeds": list(flags.seeds), "shots": flags.shots, "by_seed": seeds,
           "mean_rmse_last": round(sum(values) / len(values), 3)}
    emit(out, flags)
    return out


if __name__ == "__main__":
    main(parse_flags(Flags))
