"""Predictive maintenance: remaining useful life (RUL) from sensor windows, adapted to new fleets.

Operators of similar machines meta-learn a degradation model together without sharing sensor data;
a new fleet adapts it from a few run-to-failure histories. Default data: NASA C-MAPSS FD001 cut into
simulated operators (see :mod:`data_adapters.cmapss`); a GENERATED stand-in when the files are absent.

Files: ``config.py``, ``model.py``, ``problem.py``, ``metrics.py``, ``presets/``, this module (registration),
and ``reference.py`` (the non-federated baselines of the held-out table).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.tasks import Federation, Site
from core.vertical import VerticalSpec, register_vertical
from data_adapters.cmapss import build_cmapss_federation, load_new_fleet_site
from verticals.maintenance.config import MaintenanceData
from verticals.maintenance.problem import MaintenanceProblem
from verticals.maintenance.reference import reference_baselines


def model_spec(cfg: MaintenanceData, sensors: int, rul_cap: float) -> dict:
    spec = {"kind": cfg.model, "sensors": sensors, "window": cfg.window, "hidden": cfg.hidden, "rul_cap": rul_cap}
    if cfg.context_dim < 0:
        raise ValueError(f"maintenance: --data.context-dim must be >= 0, got {cfg.context_dim}")
    if cfg.context_dim:
        spec["context_dim"] = cfg.context_dim
    if cfg.model == "cnn":
        spec.update(channels=cfg.channels, kernel=cfg.kernel)
    return spec


def problem_for(federation: Federation, preprocessing: dict, cfg: MaintenanceData) -> MaintenanceProblem:
    return MaintenanceProblem(federation, preprocessing, train_units=cfg.train_units, query_units=cfg.query_units,
                              windows_per_unit=cfg.windows_per_unit, support_windows=cfg.support_windows)


def prepare(cfg: MaintenanceData, seed: int) -> MaintenanceProblem:
    federation, prep = build_cmapss_federation(cfg, seed)
    prep["model"] = model_spec(cfg, len(prep["sensors"]), prep["rul_cap"])
    return problem_for(federation, prep, cfg)


def load_new_site(cfg: MaintenanceData, preprocessing: dict, site_id: Optional[str]) -> tuple[MaintenanceProblem, Site]:
    """Onboarding: the new fleet in ``cfg.path`` (+ ``cfg.rul_path``) windowed with the SAVED preprocessing."""
    site = load_new_fleet_site(cfg, preprocessing, site_id)
    fed = Federation({site.site_id: site}, {"test": [site.site_id]})
    return problem_for(fed, preprocessing, cfg), site


SPEC = register_vertical(
    VerticalSpec(
        name="maintenance",
        description="Predictive maintenance: RUL of engines from sensor windows (NASA C-MAPSS, operators as sites)",
        data_config=MaintenanceData,
        prepare=prepare,
        load_new_site=load_new_site,
        presets_dir=Path(__file__).parent / "presets",
        onboard_args="--data FLEET_FILE [--rul RUL_FILE]",
        onboard_flags={"rul": "rul_path"},
        schema=lambda problem: {"settings": problem.preprocessing["settings"], "window": problem.preprocessing["window"],
                                "sensors": sorted(problem.preprocessing["sensors"]
                                                  + problem.preprocessing.get("dropped_sensors", []))},
        reference_baselines=reference_baselines,
    )
)
