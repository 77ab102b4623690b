"""NASA C-MAPSS (and any run-to-failure fleet table) as a federation of operators.

Input, any of:

* a C-MAPSS subset FD001-FD004 in ``data_dir`` (``train_FD00x.txt``; units run to failure);
* an explicit ``path``: a C-MAPSS train file, a test file with its ``rul_path``, or a generic
  long-format CSV/Parquet table ``site, unit, time, sensors..., [rul]`` (column names configurable);
* ``extra_paths``: more C-MAPSS train files (e.g. another subset): real, unsimulated sites of their own.

Sites: a table with several ``site`` values gives one site each (real sites). A single fleet (a
C-MAPSS file) is cut into operators of ``units_per_site`` units by a seeded shuffle, each with the
SIMULATED calibration / noise / regime differences documented in :mod:`data_adapters.cmapss_sim`.

Labels: RUL per cycle (:mod:`data_adapters.cmapss_io`), capped piecewise-linearly at ``rul_cap``.
Inputs: sliding windows ``[window, sensors]`` (stride ``stride``, anchored at each unit's last cycle),
normalized with statistics aggregated across TRAINING sites only (optionally per operating condition),
constant sensors dropped by aggregated variance (:mod:`data_adapters.cmapss_features`).

Default data location: ``$FML_CMAPSS_DIR``, else ``$FML_DATA_DIR/cmapss``, else
``<repo>/../shared/data/cmapss``. When none holds the subset's files and ``allow_generated`` is on, a
GENERATED degradation fleet in the same format is used, with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import pandas as pd

from core.seeds import site_seed
from core.tasks import Federation, Site, SiteDataError, assign_roles
from data_adapters.cmapss_features import (
    assign_conditions,
    fit_conditions,
    frame_to_site,
    normalization_from_moments,
    site_conditions,
)
from data_adapters.cmapss_io import (
    CMAPSS_SENSORS,
    CMAPSS_SETTINGS,
    Fleet,
    FleetDataError,
    TableColumns,
    add_rul_labels,
    read_fleet,
)
from data_adapters.cmapss_sim import apply_operator_shift, draw_shift, generate_cmapss, generated_frame, group_units
from data_adapters.sources import combine_moments, locate, moments, warn_generated

GENERATED_SOURCE = "GENERATED degradation data (NOT NASA C-MAPSS)"


@dataclass
class CmapssConfig(TableColumns):
    """Options of the C-MAPSS / fleet-table federation (the table column names are inherited)."""

    path: Optional[str] = None
    """A C-MAPSS train or test file, or a generic CSV/Parquet fleet table; default: train_<subset>.txt in data_dir."""
    rul_path: Optional[str] = None
    """RUL_FD00x.txt matching a C-MAPSS TEST file given as `path` (fml onboard --rul)."""
    data_dir: Optional[str] = None
    """Folder of the C-MAPSS files; default $FML_CMAPSS_DIR, $FML_DATA_DIR/cmapss, then <repo>/../shared/data/cmapss."""
    subset: str = "FD001"
    """C-MAPSS subset read from data_dir when `path` is not given (FD001-FD004)."""
    include_test_file: bool = False
    """Also give operators the test_<subset>.txt engines (labelled by RUL_<subset>.txt, scored at their last cycle)."""
    extra_paths: list[str] = field(default_factory=list)
    """More C-MAPSS train files (e.g. another subset): real, unsimulated sites of units_per_site engines."""
    allow_generated: bool = True
    """Use a clearly-labelled GENERATED degradation fleet (with a warning) when the real files are absent."""
    rul_cap: float = 125.0
    """Piecewise-linear cap of the RUL label (cycles)."""
    window: int = 30
    """Window length (cycles) of a model input."""
    stride: int = 1
    """Cycles between consecutive windows of a unit (windows are anchored at the unit's last cycle)."""
    short_units: str = "reject"
    """A unit with fewer cycles than `window`: reject (error naming the unit) or pad (repeat its first cycle)."""
    normalize: str = "auto"
    """Normalization: global, condition (per operating condition: FD002/FD004) or auto (condition if several)."""
    condition_decimals: list[int] = field(default_factory=lambda: [0, 2, 0])
    """Decimals to which each operational setting is rounded to identify operating conditions."""
    min_std: float = 0.005
    """Sensors whose aggregated within-condition std is below this (sensor units) are dropped as constant."""
    units_per_site: int = 10
    """Units (engines) per simulated operator when one fleet is cut into sites."""
    operators: int = 0
    """Generate this many simulated operators (0 = cut the fleet into operators of units_per_site units): each
    draws units_per_site of the fleet's units and its own simulated shift, seeded by its id, and is built only
    when used (lazy sites: 100,000 operators fit in the memory of a round)."""
    preprocessing_sites: int = 200
    """With data.operators: the federated normalization is fitted on a seeded sample of this many training operators."""
    cached_sites: int = 32
    """With data.operators: operators kept built at once (memory is O(cached sites), not O(operators))."""
    validation_sites: int = 1
    """Sites held out for the adaptation-settings search and checkpoint selection."""
    test_sites: int = 2
    """Held-out test sites (never trained on; normalized with the training sites' statistics)."""
    test_site_ids: list[str] = field(default_factory=list)
    """Site ids forced into the test role (the rest of the test sites are drawn with the seed)."""
    simulate: bool = True
    """Apply the documented per-operator simulation (calibration, noise, regime mix) to sites cut from one fleet."""
    gain_std: float = 0.15
    """Per-operator, per-sensor calibration gain g = exp(N(0, gain_std)), applied to deviations from the fleet mean."""
    offset_std: float = 0.75
    """Spread of the per-operator, per-sensor calibration offset, in fleet standard deviations."""
    noise_std: float = 0.3
    """Per-operator extra measurement noise (fleet standard deviations), scaled by U(0.5, 1.5) per operator."""
    regime_concentration: float = 1.0
    """Dirichlet concentration of each operator's operating-condition mix (subsets with several conditions; 0 = off)."""
    eval_cut: str = "random"
    """Evaluation window of a run-to-failure unit: random (seeded cut, as C-MAPSS's test set) or last (failure)."""

    #: the options that choose the fleet and its columns: changing one registers under another model name
    #: (include_test_file is not one: it adds the same fleet's other units, as the full preset does)
    DATASET_OPTIONS: ClassVar[tuple[str, ...]] = ("path", "rul_path", "data_dir", "subset", "extra_paths",
                                                  "site_column", "unit_column", "time_column", "target_column",
                                                  "sensor_columns", "setting_columns")

    def __post_init__(self) -> None:
        choices = {"short_units": ("reject", "pad"), "normalize": ("auto", "global", "condition"),
                   "eval_cut": ("random", "last")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"data.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"data.window ({self.window}) and data.stride ({self.stride}) must be >= 1")
        if self.operators < 0 or self.preprocessing_sites < 1 or self.cached_sites < 1:
            raise ValueError(f"data.operators ({self.operators}) must be >= 0, data.preprocessing_sites "
                             f"({self.preprocessing_sites}) and data.cached_sites ({self.cached_sites}) >= 1")


# ------------------------------------------------------------------------------------ data location


def default_data_dir() -> Path:
    """``$FML_CMAPSS_DIR``, else ``$FML_DATA_DIR/cmapss``, else ``<repo>/../shared/data/cmapss``."""
    return locate("cmapss", "FML_CMAPSS_DIR")


def generated_fleet(seed: int = 12345, train_units: int = 100, test_units: int = 100) -> tuple[Fleet, Fleet]:
    """The GENERATED stand-in fleet (train run to failure, test truncated) as labelled :class:`Fleet`s."""
    train, test, rul = generate_cmapss(train_units, test_units, seed)
    tr = generated_frame(train)
    tr.insert(0, "site", "fleet")
    te = generated_frame(test)
    te.insert(0, "site", "fleet")
    last = {("fleet", u): float(r) for u, r in zip(sorted(te["unit"].unique()), rul)}
    return (Fleet(add_rul_labels(tr), list(CMAPSS_SETTINGS), list(CMAPSS_SENSORS), GENERATED_SOURCE + ", train"),
            Fleet(add_rul_labels(te, last), list(CMAPSS_SETTINGS), list(CMAPSS_SENSORS),
                  GENERATED_SOURCE + ", test", truncated=True))


def load_source(cfg: CmapssConfig) -> Fleet:
    """The main fleet: ``cfg.path`` if given, else the subset's train file, else (allowed) generated data."""
    if cfg.path:
        return read_fleet(cfg.path, cfg.rul_path, cfg)
    folder = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    train = folder / f"train_{cfg.subset}.txt"
    if train.is_file():
        fleet = read_fleet(train, None, cfg)
        if cfg.include_test_file:
            test = read_fleet(folder / f"test_{cfg.subset}.txt", folder / f"RUL_{cfg.subset}.txt", cfg)
            fleet = merge_fleets(fleet, test)
        return fleet
    if not cfg.allow_generated:
        raise FileNotFoundError(
            f"{train}: C-MAPSS file not found; put train_{cfg.subset}.txt there, set FML_CMAPSS_DIR / data.data_dir, "
            "or allow generated data (data.allow_generated=true)"
        )
    warn_generated("C-MAPSS", train, "a GENERATED degradation dataset in the C-MAPSS format",
                   "Set FML_CMAPSS_DIR (or FML_DATA_DIR, or data.data_dir) to the folder of the real files.")
    train_gen, test_gen = generated_fleet()
    return merge_fleets(train_gen, test_gen) if cfg.include_test_file else train_gen


def merge_fleets(train: Fleet, test: Fleet) -> Fleet:
    """One fleet of a train file's units (ids ``"train-<u>"``) and a test file's units (``"test-<u>"``).

    A per-unit ``truncated`` flag column records which units stop before failure (evaluated at
    their last cycle instead of a random cut).
    """
    parts = []
    for tag, fleet in (("train", train), ("test", test)):
        frame = fleet.frame.copy()
        frame["unit"] = [f"{tag}-{u}" for u in frame["unit"]]
        frame["truncated"] = fleet.truncated
        parts.append(frame)
    merged = pd.concat(parts, ignore_index=True)
    return Fleet(merged, train.settings, train.sensors, f"{train.source} + {test.source}", truncated=False)


# ------------------------------------------------------------------------------------- federation


@dataclass
class RawSite:
    """One site's labelled rows before normalization."""

    site_id: str
    frame: pd.DataFrame
    truncated: bool
    where: str
    metadata: dict


def fleet_reference(fleet: Fleet, cfg: CmapssConfig) -> tuple[np.ndarray, int, dict]:
    """What the operator simulation knows of the whole fleet: each row's operating condition, the number of
    conditions, and the fleet's per-condition sensor moments (see :mod:`data_adapters.cmapss_sim`)."""
    conditions = fit_conditions([site_conditions(fleet.frame, fleet.settings, cfg.condition_decimals)],
                                cfg.condition_decimals)
    cond = assign_conditions(fleet.frame, fleet.settings, conditions)
    n_cond = len(conditions["centers"]) or 1
    return cond, n_cond, normalization_from_moments(moments(fleet.frame[fleet.sensors].to_numpy(), cond, n_cond), 0.0)


def _site_frames(fleet: Fleet, cfg: CmapssConfig, rng: np.random.Generator, prefix: str,
                 simulate: bool) -> list[RawSite]:
    """Split a fleet into sites: its own ``site`` values if several, else seeded operators (simulated if asked)."""
    frame = fleet.frame
    names = list(dict.fromkeys(frame["site"]))
    if len(names) > 1:
        return [RawSite(str(s), frame[frame["site"] == s].reset_index(drop=True), fleet.truncated, fleet.source,
                        {"source": fleet.source, "simulated": False}) for s in names]
    units = list(dict.fromkeys(frame["unit"]))
    groups = group_units(units, cfg.units_per_site, rng)
    cond, n_cond, fleet_stats = fleet_reference(fleet, cfg)
    out = []
    for i, members in enumerate(groups):
        sid = f"{prefix}-{i:02d}"
        mask = frame["unit"].isin(members).to_numpy()
        sub = frame[mask].reset_index(drop=True)
        sub["site"] = sid
        meta = {"source": fleet.source, "simulated": simulate, "source_units": [str(u) for u in members]}
        if simulate:
            shift = draw_shift(rng, len(fleet.sensors), n_cond, cfg.gain_std, cfg.offset_std, cfg.noise_std,
                               cfg.regime_concentration)
            sub = apply_operator_shift(sub, fleet.sensors, cond[mask], fleet_stats["mean"],
                                       np.where(fleet_stats["pooled_std"] > 0, fleet_stats["std"], 0.0),
                                       shift, rng, min_rows=cfg.window)
            meta["simulation"] = shift.describe(fleet.sensors)
        out.append(RawSite(sid, sub, fleet.truncated, fleet.source, meta))
    return out


def site_roles(site_ids: list[str], cfg: CmapssConfig, seed: int) -> dict[str, list[str]]:
    """Seeded train/validation/test roles by site id (:func:`core.tasks.assign_roles`, before any site is built)."""
    return assign_roles(site_ids, validation=cfg.validation_sites, test=cfg.test_sites, seed=seed,
                        test_ids=cfg.test_site_ids)[0]


def fit_preprocessing(train: list[RawSite], settings: list[str], sensors: list[str], cfg: CmapssConfig,
                      source: str) -> dict:
    """Federated preprocessing from the TRAINING sites only: conditions, moments, normalization, kept sensors."""
    conditions = fit_conditions([site_conditions(s.frame, settings, cfg.condition_decimals) for s in train],
                                cfg.condition_decimals)
    by_condition = cfg.normalize == "condition" or (cfg.normalize == "auto" and len(conditions["centers"]) > 1)
    if not by_condition:
        conditions = {"decimals": list(cfg.condition_decimals), "centers": [], "scale": []}
    n_cond = max(len(conditions["centers"]), 1)
    pooled = combine_moments([
        moments(s.frame[sensors].to_numpy(), assign_conditions(s.frame, settings, conditions), n_cond)
        for s in train
    ])
    stats = normalization_from_moments(pooled, cfg.min_std)
    keep = stats["keep"]
    if not keep.any():
        raise FleetDataError(f"{source}: every sensor is constant across the training sites (std < min_std="
                             f"{cfg.min_std}); lower data.min_std or check the sensor columns")
    return {
        "format": "fml-rul-windows/1",
        "source": source,
        "generated": source.startswith("GENERATED"),
        "settings": list(settings),
        "sensors": [s for s, k in zip(sensors, keep) if k],
        "dropped_sensors": [s for s, k in zip(sensors, keep) if not k],
        "normalize": "condition" if by_condition else "global",
        "conditions": conditions,
        "mean": stats["mean"][:, keep].tolist(),
        "std": stats["std"][:, keep].tolist(),
        "rows_per_condition": pooled["count"].tolist(),
        "window": int(cfg.window),
        "stride": int(cfg.stride),
        "rul_cap": float(cfg.rul_cap),
        "short_units": cfg.short_units,
    }


def build_cmapss_federation(cfg: CmapssConfig, seed: int) -> tuple[Federation, dict]:
    """Read, split into sites, simulate operators, fit federated preprocessing, window.

    Returns:
        ``(federation, preprocessing)``; ``preprocessing`` is JSON-able and saved with the model.
    """
    rng = np.random.default_rng(seed)
    main = load_source(cfg)
    if cfg.operators:
        from data_adapters.cmapss_operators import lazy_operator_federation

        return lazy_operator_federation(main, cfg, seed)
    raw = _site_frames(main, cfg, rng, "op", cfg.simulate)
    for extra in cfg.extra_paths:
        fleet = read_fleet(extra, None, cfg)
        if fleet.sensors != main.sensors:
            raise FleetDataError(f"{extra}: sensor columns {fleet.sensors} differ from {main.source}'s {main.sensors}")
        raw += _site_frames(fleet, cfg, rng, Path(extra).stem, simulate=False)
    ids = [s.site_id for s in raw]
    if len(set(ids)) != len(ids):
        raise SiteDataError(f"duplicate site ids {sorted({i for i in ids if ids.count(i) > 1})}; rename the sites")
    roles = site_roles(ids, cfg, seed)
    by_id = {s.site_id: s for s in raw}
    prep = fit_preprocessing([by_id[s] for s in roles["train"]], main.settings, main.sensors, cfg, main.source)
    sites = [frame_to_site(s.site_id, s.frame, prep, where=s.where, truncated=s.truncated, eval_cut=cfg.eval_cut,
                           rng=rng, metadata=s.metadata) for s in raw]
    return Federation({s.site_id: s for s in sites}, roles), prep


def operator_frames(cfg: CmapssConfig, seed: int) -> dict[str, pd.DataFrame]:
    """The raw (labelled, simulated, NOT normalized) rows of every site, exactly as
    :func:`build_cmapss_federation` with the same ``seed`` builds them (for exports and diagnostics)."""
    rng = np.random.default_rng(seed)
    main = load_source(cfg)
    raw = _site_frames(main, cfg, rng, "op", cfg.simulate)
    for extra in cfg.extra_paths:
        raw += _site_frames(read_fleet(extra, None, cfg), cfg, rng, Path(extra).stem, simulate=False)
    return {s.site_id: s.frame for s in raw}


def load_new_fleet_site(cfg: CmapssConfig, preprocessing: dict, site_id: Optional[str]) -> Site:
    """Onboarding: one new site's labelled units from ``cfg.path`` (+ ``cfg.rul_path``) with SAVED preprocessing.

    A table with several sites needs ``site_id`` to pick one; a C-MAPSS file is one site.
    """
    if not cfg.path:
        raise FleetDataError("onboarding needs the new site's data: --data <test_FD00x.txt or table> "
                             "(and --rul <RUL_FD00x.txt> for a C-MAPSS test file)")
    fleet = read_fleet(cfg.path, cfg.rul_path, cfg, site=site_id or Path(cfg.path).stem)
    names = list(dict.fromkeys(fleet.frame["site"]))
    if len(names) > 1:
        if site_id not in names:
            raise SiteDataError(f"{cfg.path} holds sites {names}; pick one with the site id (got {site_id!r})")
        frame = fleet.frame[fleet.frame["site"] == site_id].reset_index(drop=True)
    else:
        frame = fleet.frame
    sid = site_id or str(names[0])
    rng = np.random.default_rng(site_seed(sid))
    prep = {**preprocessing, "short_units": cfg.short_units}
    return frame_to_site(sid, frame, prep, where=str(cfg.path), truncated=fleet.truncated,
                         eval_cut=cfg.eval_cut, rng=rng, metadata={"source": fleet.source, "simulated": False})
