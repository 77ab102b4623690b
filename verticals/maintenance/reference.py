"""NON-federated reference row of the maintenance table: the floor adaptation can reach.

``oracle no shift (non-federated)``: the same architecture trained CENTRALLY on the training operators'
UNSIMULATED rows (the source C-MAPSS fleet before the documented per-operator calibration, noise and
regime simulation) and scored on the test operators' unsimulated rows, on exactly the units and
evaluation windows the federated methods are scored on (same draws). It sees neither the simulated
shift nor any adaptation: how close a method gets to it is how much of the operators' shift it undoes.
Only defined when the sites are simulated operators cut from one fleet (``data.simulate``, not
``data.operators``); otherwise no rows.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import pandas as pd
import torch

from core.evaluation import task_generator
from core.problem import Problem
from core.tasks import Site
from data_adapters.cmapss import build_cmapss_federation

log = logging.getLogger(__name__)

METHOD = "oracle no shift (non-federated)"


def unsimulated_sites(data_cfg: Any, seed: int, problem: Problem) -> dict[str, Site]:
    """The run's sites without the operator simulation (same units, windows and evaluation cuts), or {}
    when the run's sites are not simulated or the windows differ (a regime mix thins rows)."""
    if not getattr(data_cfg, "simulate", False) or getattr(data_cfg, "operators", 0):
        return {}  # generated operators (data.operators) are lazy: pooling every one is what they avoid
    federation, _ = build_cmapss_federation(dataclasses.replace(data_cfg, simulate=False), seed)
    out = {}
    for sid, site in problem.federation.sites.items():
        plain = federation.sites.get(sid)
        if plain is None or plain.x.shape != site.x.shape:
            return {}
        plain.metadata["cut_rows"] = site.metadata.get("cut_rows")
        out[sid] = plain
    return out


def fit_central(problem: Problem, sites: Sequence[Site], seed: int, steps: int = 2000, batch: int = 256) -> dict:
    """The architecture trained on the pooled windows of ``sites`` (Adam, MSE on RUL / rul_cap)."""
    torch.manual_seed(seed)
    model = problem.make_model()
    loss_fn = problem.loss_fn(model)
    x = torch.cat([s.x for s in sites])
    y = torch.cat([s.y for s in sites])
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=gen)
        opt.zero_grad()
        loss_fn(params, (x[idx], y[idx])).backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def reference_baselines(problem: Problem, run_cfg: Any, test_sites: Sequence[Site]) -> pd.DataFrame:
    """The pipeline hook (``VerticalSpec.reference_baselines``): the oracle's rows on the run's draws."""
    plain = unsimulated_sites(run_cfg.data, int(run_cfg.seed), problem)
    if not plain:
        log.info("maintenance: no oracle row (the sites are not simulated operators of one fleet)")
        return pd.DataFrame(columns=["site", "method", "shots", "steps", "draw", "metric", "value"])
    train = [plain[s] for s in problem.federation.roles["train"]]
    params = fit_central(problem, train, int(run_cfg.seed))
    model = problem.make_model()
    records = []
    for i, site in enumerate(test_sites):
        for k in run_cfg.eval.shots:
            for d in range(int(run_cfg.eval.draws)):
                task = problem.few_shot_task(model, plain[site.site_id], k, task_generator(int(run_cfg.seed), i, k, d))
                records += [{"site": site.site_id, "method": METHOD, "shots": k, "steps": 0, "draw": d,
                             "metric": name, "value": float(value)} for name, value in task.score(params).items()]
    return pd.DataFrame.from_records(records)


__all__ = ["METHOD", "fit_central", "reference_baselines", "unsimulated_sites"]
