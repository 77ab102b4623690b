"""NON-federated reference row of the maintenance table: the floor adaptation can reach.

``oracle no shift (non-federated)``: the same architecture trained CENTRALLY on the training operators'
UNSIMULATED rows (the source C-MAPSS fleet before the documented per-operator calibration, noise and
regime simulation), its learning rate and stopping step chosen on the validation operators' unsimulated
rows (it overfits the pooled windows within a few hundred Adam steps), and scored on the test operators' unsimulated rows, on exactly the units and
evaluation windows the federated methods are scored on (same draws). It sees neither the simulated
shift nor any adaptation: how close a method gets to it is how much of the operators' shift it undoes.
Defined when the sites are operators cut from a fleet's units (not a fleet's own sites, not ``data.operators``);
with ``data.simulate=false`` they are the run's own rows, so the row is the central model at that run's windows.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

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
    when the sites are not operators cut from a fleet or the windows differ (a regime mix thins rows). A run
    without the simulation gets its own unshifted rows: the oracle is then scored at ITS cuts (a simulated build
    of the same seed draws other ones, so the two runs' floors are not interchangeable)."""
    if getattr(data_cfg, "operators", 0):
        return {}  # generated operators (data.operators) are lazy: pooling every one is what they avoid
    if any("source_units" not in site.metadata for site in problem.federation.sites.values()):
        return {}  # a fleet's own sites (its site column) are real operators: no unshifted version of them
    federation, _ = build_cmapss_federation(dataclasses.replace(data_cfg, simulate=False), seed)
    out = {}
    for sid, site in problem.federation.sites.items():
        plain = federation.sites.get(sid)
        if plain is None or plain.x.shape != site.x.shape:
            return {}
        plain.metadata["cut_rows"] = site.metadata.get("cut_rows")
        out[sid] = plain
    return out


@dataclasses.dataclass(frozen=True)
class CentralFit:
    """The chosen weights and how they were chosen: ``history`` holds ``(lr, step, validation loss)``."""

    params: dict[str, torch.Tensor]
    lr: float
    step: int
    val_loss: float
    history: list[tuple[float, int, float]]


def fit_central(problem: Problem, sites: Sequence[Site], val_sites: Sequence[Site], seed: int,
                lrs: Sequence[float] = (3e-4, 1e-3), max_steps: int = 3000, every: int = 50, patience: int = 20,
                batch: int = 256) -> CentralFit:
    """The architecture trained on the pooled windows of ``sites`` (Adam, the problem's loss), keeping the
    (lr, step) with the lowest loss on every window of ``val_sites``: checked every ``every`` steps, a lr's run
    stops after ``patience`` checks without a new best."""
    with torch.random.fork_rng(devices=[]):
        loss_fn = problem.loss_fn(problem.make_model())
    x, y = torch.cat([s.x for s in sites]), torch.cat([s.y for s in sites])
    val = (torch.cat([s.x for s in val_sites]), torch.cat([s.y for s in val_sites]))
    best: Optional[tuple[float, float, int, dict[str, torch.Tensor]]] = None  # (val loss, lr, step, weights)
    history: list[tuple[float, int, float]] = []
    for lr in lrs:
        with torch.random.fork_rng(devices=[]):  # the same init for every lr; the caller's RNG untouched
            torch.manual_seed(seed)
            init = problem.make_model()
        params = {k: v.detach().clone().requires_grad_() for k, v in init.named_parameters()}
        opt = torch.optim.Adam(params.values(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        since_best = 0
        for step in range(1, max_steps + 1):
            idx = torch.randint(len(x), (batch,), generator=gen)
            opt.zero_grad()
            loss_fn(params, (x[idx], y[idx])).backward()
            opt.step()
            if step % every:
                continue
            with torch.no_grad():
                val_loss = float(loss_fn(params, val))
            history.append((lr, step, val_loss))
            if best is None or val_loss < best[0]:
                best, since_best = (val_loss, lr, step, {k: v.detach().clone() for k, v in params.items()}), 0
            else:
                since_best += 1
                if since_best >= patience:
                    break
    if best is None:
        raise ValueError(f"fit_central: max_steps={max_steps} < every={every}: no validation check ran")
    val_loss, lr, step, weights = best
    return CentralFit(weights, lr, step, val_loss, history)


def reference_baselines(problem: Problem, run_cfg: Any, test_sites: Sequence[Site]) -> pd.DataFrame:
    """The pipeline hook (``VerticalSpec.reference_baselines``): the oracle's rows on the run's draws."""
    plain = unsimulated_sites(run_cfg.data, int(run_cfg.seed), problem)
    if not plain:
        log.info("maintenance: no oracle row (the sites are not operators cut from a fleet)")
        return pd.DataFrame(columns=["site", "method", "shots", "steps", "draw", "metric", "value"])
    roles = problem.federation.roles
    if not roles.get("validation"):
        log.info("maintenance: no oracle row (no validation operators to choose its learning rate and stop)")
        return pd.DataFrame(columns=["site", "method", "shots", "steps", "draw", "metric", "value"])
    fit = fit_central(problem, [plain[s] for s in roles["train"]], [plain[s] for s in roles["validation"]],
                      int(run_cfg.seed))
    log.info("maintenance: oracle lr %g, stopped at step %d (validation loss %.4f)", fit.lr, fit.step, fit.val_loss)
    params = fit.params
    model = problem.make_model()
    records = []
    for i, site in enumerate(test_sites):
        for k in run_cfg.eval.shots:
            for d in range(int(run_cfg.eval.draws)):
                task = problem.few_shot_task(model, plain[site.site_id], k, task_generator(int(run_cfg.seed), i, k, d))
                records += [{"site": site.site_id, "method": METHOD, "shots": k, "steps": 0, "draw": d,
                             "metric": name, "value": float(value)} for name, value in task.score(params).items()]
    return pd.DataFrame.from_records(records)


__all__ = ["METHOD", "CentralFit", "fit_central", "reference_baselines", "unsimulated_sites"]
