"""Fraud vertical: few-shot fraud detection across institutions (tabular claims/transactions).

Institutions (by default the car ``Make`` of the vehicle-insurance claims file) cannot pool claims; the
FML algorithms meta-learn an MLP initialization that a new institution adapts with k frauds + k
non-frauds. Data: any CSV/Parquet through :mod:`data_adapters.tabular` (generated synthetic claims when
the real file is absent); see :mod:`verticals.fraud.problem` for episodes and scoring.

Files: ``config.py``, ``model.py``, ``problem.py``, ``metrics.py``, ``presets/``, this module (registration),
and ``reference.py`` (the non-federated baselines of the held-out table).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from core.tasks import Federation, Site
from core.vertical import VerticalSpec, register_vertical
from data_adapters.fraud_claims import resolve_claims, without_claims_defaults
from data_adapters.sources import read_table
from data_adapters.tabular import build_tabular_federation, load_tabular_site, tabular_schema
from verticals.fraud.config import FraudConfig
from verticals.fraud.problem import FraudProblem, fraud_problem, model_settings
from verticals.fraud.reference import reference_baselines

log = logging.getLogger(__name__)


def describe(problem: FraudProblem) -> str:
    parts = []
    for role, ids in problem.federation.roles.items():
        cells = [f"{s} ({len(problem.federation.sites[s])} rows, {int(problem.federation.sites[s].y.sum())} frauds)"
                 for s in ids]
        parts.append(f"{role}: {', '.join(cells) or '-'}")
    return "; ".join(parts)


def prepare(cfg: FraudConfig, seed: int) -> FraudProblem:
    """Read/validate the claims, split institutions into roles, fit the federated preprocessing."""
    data, source = resolve_claims(cfg)
    if cfg.path:  # another table: the claims file's id column and makes do not apply
        data = read_table(data)
        cfg = without_claims_defaults(cfg, data, source)
    federation, prep, excluded = build_tabular_federation(cfg, data, seed, name=source)
    prep["model"] = model_settings(cfg.hidden, cfg.loss, cfg.pos_weight, cfg.focal_gamma, cfg.focal_alpha)
    prep["source"] = source
    problem = fraud_problem(federation, prep, train_shots=cfg.train_shots, train_query=cfg.train_query,
                            excluded=excluded, source=source)
    log.info("fraud data %s: %s", source, describe(problem))
    return problem


def load_new_site(cfg: FraudConfig, preprocessing: dict, site_id: Optional[str]) -> tuple[FraudProblem, Site]:
    """One new institution's labelled rows (``cfg.path``), transformed with the SAVED preprocessing."""
    data, source = resolve_claims(cfg)
    site = load_tabular_site(data, preprocessing, site_id, name=source)
    federation = Federation({site.site_id: site}, {"test": [site.site_id]})
    problem = fraud_problem(federation, preprocessing, train_shots=cfg.train_shots, train_query=cfg.train_query,
                            source=source)
    return problem, site


SPEC = register_vertical(
    VerticalSpec(
        name="fraud",
        description="Few-shot fraud detection across institutions: MLP on tabular claims, PR-AUC headline "
                    "(vehicle-insurance claims by Make; any CSV/Parquet with a site and a binary label column)",
        data_config=FraudConfig,
        prepare=prepare,
        load_new_site=load_new_site,
        presets_dir=Path(__file__).parent / "presets",
        reference_baselines=reference_baselines,
        schema=lambda problem: tabular_schema(problem.preprocessing),
    )
)
