"""Many simulated operators of one run-to-failure fleet, built on demand (``--data.operators N``).

Operator ``op-00042`` is a function of (seed, its id) only: it draws ``units_per_site`` of the fleet's units
and its own simulated shift (:mod:`data_adapters.cmapss_sim`) from a generator seeded by the id, so it can be
rebuilt whenever a round samples it and nothing is kept per operator but a handle
(:class:`core.tasks.LazySite`). Units are drawn without replacement within an operator, with replacement
across operators (100,000 operators share C-MAPSS's 100 training engines, each seen through its own
simulated calibration, noise and regime mix). The federated normalization is fitted on a seeded sample of
``preprocessing_sites`` training operators (their moments are combined exactly as for cut operators).
"""
from __future__ import annotations

import hashlib
import json
from functools import partial

import numpy as np
import pandas as pd

from core.seeds import site_seed
from core.tasks import Federation, LazySite, RowCache, Site
from data_adapters.cmapss import CmapssConfig, RawSite, fit_preprocessing, fleet_reference, site_roles
from data_adapters.cmapss_features import frame_to_site
from data_adapters.cmapss_io import Fleet, FleetDataError
from data_adapters.cmapss_sim import apply_operator_shift, draw_shift


class _Operators:
    """The fleet and what every operator is drawn from (shared by all handles)."""

    def __init__(self, fleet: Fleet, cfg: CmapssConfig, seed: int) -> None:
        self.fleet, self.cfg, self.seed = fleet, cfg, seed
        self.cond, self.n_cond, self.stats = fleet_reference(fleet, cfg)
        self.rows_of_unit = list(fleet.frame.groupby("unit", sort=False).indices.values())
        if cfg.units_per_site > len(self.rows_of_unit):
            raise FleetDataError(f"{fleet.source}: an operator needs data.units_per_site={cfg.units_per_site} units "
                                 f"but the fleet has {len(self.rows_of_unit)}; lower data.units_per_site")

    def raw(self, site_id: str) -> RawSite:
        cfg, fleet = self.cfg, self.fleet
        rng = np.random.default_rng(site_seed(self.seed, site_id))
        members = rng.choice(len(self.rows_of_unit), cfg.units_per_site, replace=False)
        rows = np.sort(np.concatenate([self.rows_of_unit[m] for m in members]))
        sub = fleet.frame.iloc[rows].reset_index(drop=True)
        sub["site"] = site_id
        units = sub["unit"].drop_duplicates().tolist()
        meta = {"source": fleet.source, "simulated": cfg.simulate, "source_units": [str(u) for u in units]}
        if cfg.simulate:
            shift = draw_shift(rng, len(fleet.sensors), self.n_cond, cfg.gain_std, cfg.offset_std, cfg.noise_std,
                               cfg.regime_concentration)
            sub = apply_operator_shift(sub, fleet.sensors, self.cond[rows], self.stats["mean"],
                                       np.where(self.stats["pooled_std"] > 0, self.stats["std"], 0.0), shift, rng,
                                       min_rows=cfg.window)
            meta["simulation"] = shift.describe(fleet.sensors)
        return RawSite(site_id, sub, fleet.truncated, fleet.source, meta)

    def site(self, site_id: str, prep: dict) -> Site:
        raw = self.raw(site_id)
        rng = np.random.default_rng(site_seed(self.seed, site_id, "evaluation-cut"))
        return frame_to_site(site_id, raw.frame, prep, where=raw.where, truncated=raw.truncated,
                             eval_cut=self.cfg.eval_cut, rng=rng, metadata=raw.metadata)


def lazy_operator_federation(fleet: Fleet, cfg: CmapssConfig, seed: int) -> tuple[Federation, dict]:
    """``cfg.operators`` lazy operators of ``fleet`` with seeded roles, and the federated preprocessing."""
    if cfg.extra_paths:
        raise FleetDataError("data.operators generates operators from one fleet; drop data.extra_paths")
    if len(set(fleet.frame["site"])) > 1:
        raise FleetDataError(f"{fleet.source} names its own sites; data.operators only generates operators "
                             "from a single fleet")
    operators = _Operators(fleet, cfg, seed)
    ids = [f"op-{i:05d}" for i in range(cfg.operators)]
    roles = site_roles(ids, cfg, seed)
    pick = np.random.default_rng(seed).permutation(len(roles["train"]))[: cfg.preprocessing_sites]
    sample = [operators.raw(roles["train"][i]) for i in sorted(pick)]
    prep = fit_preprocessing(sample, fleet.settings, fleet.sensors, cfg, fleet.source)
    prep["operators"] = {"count": cfg.operators, "preprocessing_sites": len(sample)}
    digest = hashlib.sha256(pd.util.hash_pandas_object(fleet.frame, index=False).values.tobytes())
    digest.update(json.dumps([prep, repr(cfg), seed], sort_keys=True, default=str).encode())
    cache = RowCache(cfg.cached_sites)
    sites = {sid: LazySite(sid, partial(operators.site, sid, prep), cache, identity=digest.digest())
             for sid in ids}
    return Federation(sites, roles), prep
