"""The node side of ``fml federate``: read a SuperNode's site through its vertical.

Imported by every ClientApp process (``pipelines.flower_app``): heavy imports stay inside functions.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from core.federation.node import LoadedSite, NodeConfigError, NodeRequest, file_stamp, simulation_site_order


def vertical_spec(name: str):
    """The registered vertical ``name``, importing only its package (fast ClientApp start)."""
    import importlib

    from core.vertical import VERTICALS

    if name not in VERTICALS:
        try:
            importlib.import_module(f"verticals.{name}")
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith(f"verticals.{name}"):
                raise
            import verticals

            verticals.load_all()
    return VERTICALS.get(name)


def data_config(spec: Any, overrides: Mapping[str, Any]) -> Any:
    """The vertical's typed data config with ``overrides`` (unknown fields are errors naming the choices)."""
    from omegaconf import OmegaConf

    fields = {f.name for f in dataclasses.fields(spec.data_config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown data option(s) {unknown} for vertical {spec.name!r}; options: {sorted(fields)}")
    merged = OmegaConf.merge(OmegaConf.structured(spec.data_config), OmegaConf.create(dict(overrides)))
    return OmegaConf.to_object(merged)


_PREPARED: dict[tuple, Any] = {}


def _prepared(spec: Any, cfg: Any, *key: Any) -> Any:
    """``spec.prepare`` once per (vertical, data options, path, seed, path's size and mtime) in this
    process: a simulation actor or a long-running ClientApp serves many messages of the same federation."""
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = spec.build(cfg, key[-1])
    return _PREPARED[key]


def load_site(request: NodeRequest) -> LoadedSite:
    """Read the node's site through its vertical (``spec.prepare`` or ``spec.load_new_site``)."""
    from core.federation.records import data_from_config
    from core.tasks import SiteDataError

    spec = vertical_spec(request.vertical)
    overrides = data_from_config(request.data_json)
    if request.data_path:
        if "path" not in {f.name for f in dataclasses.fields(spec.data_config)}:
            raise NodeConfigError(f"vertical {spec.name!r} reads no data path; drop 'data-path' from the node config")
        overrides["path"] = request.data_path
    cfg = data_config(spec, overrides)
    if request.mode == "site":
        preprocessing = {}
        if request.preprocessing_path:
            preprocessing = json.loads(Path(request.preprocessing_path).read_text())
        problem, site = spec.new_site(cfg, preprocessing, request.site_id)
        return LoadedSite(problem, site, request.role or "train", -1)
    problem = _prepared(spec, cfg, request.vertical, request.data_json, request.data_path,
                        file_stamp(request.data_path), request.seed)
    federation = problem.federation
    site_id = request.site_id
    if site_id is None:  # simulation: the partition-id-th site
        order = simulation_site_order(federation)
        if not 0 <= int(request.partition_id or 0) < len(order):
            raise NodeConfigError(f"partition-id {request.partition_id} but the {spec.name} federation has "
                                  f"{len(order)} sites; run the simulation with at most {len(order)} nodes")
        site_id = order[int(request.partition_id or 0)]
    if site_id not in federation.sites:
        known = sorted(federation.sites)
        raise SiteDataError(f"node config site-id {site_id!r} is not a site of the {spec.name} federation "
                            f"(e.g. {', '.join(known[:5])}{' ...' if len(known) > 5 else ''})")
    role = federation.role_of(site_id)
    train_ids = problem.train_site_ids()
    return LoadedSite(problem, federation.sites[site_id], role, train_ids.index(site_id) if role == "train" else -1)
