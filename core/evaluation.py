"""The held-out-site protocol: shots x steps x seeded draws, every method on the same draws.

Methods:
- ``local``: the same architecture from a fresh initialization, trained on the support set only;
- ``fedavg``: the FedAvg global model, no adaptation (steps = 0 rows only);
- ``fedavg+ft``: the FedAvg model fine-tuned with the same inner loop;
- each FML algorithm's meta-initialization + adaptation.
Adaptation step sizes are chosen on VALIDATION sites for every adapting method (the same search for
baselines and FML); test sites are only scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import pandas as pd
import torch
from torch import nn

from core.adapt import adapt
from core.algorithms.base import InnerConfig, split_meta
from core.metrics import mean_ci95
from core.problem import FewShotTask, Problem
from core.tasks import Site
from core.types import Batch, Params

FML_BASELINES = ("local", "fedavg", "fedavg+ft")


@dataclass
class Method:
    """An initialization evaluated by the protocol.

    Args:
        name: table name (``local``, ``fedavg``, ``fedavg+ft`` or an algorithm).
        meta: its meta-parameters (model params, plus ``inner_lr/*`` step sizes for Meta-SGD).
        adapts: whether it is adapted (``fedavg`` is scored as is).
        lr_by_steps: adaptation step size per steps count (filled by :func:`select_adaptation`).
        trained_lr: the inner lr it was meta-trained with (added to the search grid).
        inner: its own inner-loop regularization (weight decay, proximal) if it differs from the run's.
    """

    name: str
    meta: Params
    adapts: bool = True
    lr_by_steps: dict[int, float] = field(default_factory=dict)
    trained_lr: Optional[float] = None
    inner: Optional[InnerConfig] = None
    best_steps: int = 0
    best_lr: float = 0.0
    selection_score: float = float("nan")

    @property
    def params(self) -> Params:
        return split_meta(self.meta)[0]

    @property
    def lrs(self) -> Optional[Params]:
        return split_meta(self.meta)[1]


def task_generator(seed: int, site_index: int, shots: int, draw: int) -> torch.Generator:
    """Draw seeds depend only on (seed, site, shots, draw): every method sees the same support."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + site_index) * 1_009 + shots) * 10_007 + draw)


def adapt_along(
    loss_fn, method: Method, support: Batch, steps_grid: Sequence[int], lr: float, inner: InnerConfig
) -> dict[int, Params]:
    """Adapted parameters after each steps count of ``steps_grid`` (one trajectory, same math as ``adapt``)."""
    out: dict[int, Params] = {}
    init, lrs = method.params, method.lrs
    current, done = init, 0
    for s in sorted(set(steps_grid)):
        current = adapt(loss_fn, current, support, s - done, lr, lrs=lrs, anchor=init, **(method.inner or inner).adapt_kwargs())
        current = {k: v.detach() for k, v in current.items()}
        out[s], done = current, s
    return out


def _score_method(loss_fn, method: Method, task: FewShotTask, steps_grid: Sequence[int], inner: InnerConfig,
                  lr_for: Callable[[int], float]) -> dict[int, dict[str, float]]:
    if not method.adapts:
        return {0: task.score(method.params)}
    support = task.support(method.params)
    scores: dict[int, dict[str, float]] = {}
    by_lr: dict[float, list[int]] = {}
    for s in steps_grid:
        by_lr.setdefault(lr_for(s), []).append(s)
    with torch.enable_grad():
        for lr, steps in by_lr.items():
            for s, params in adapt_along(loss_fn, method, support, steps, lr, inner).items():
                scores[s] = task.score(params)
    return scores


def select_adaptation(
    problem: Problem,
    model: nn.Module,
    methods: Iterable[Method],
    sites: Sequence[Site],
    *,
    shots: int,
    steps_grid: Sequence[int],
    lr_grid: Sequence[float],
    draws: int,
    seed: int,
    inner: InnerConfig,
) -> pd.DataFrame:
    """Choose each adapting method's step size per steps count, and its best (steps, lr), on validation sites."""
    loss_fn = problem.loss_fn(model)
    sign = 1.0 if problem.higher_is_better else -1.0
    records = []
    positive_steps = [s for s in steps_grid if s > 0]
    for method in methods:
        if not method.adapts or not positive_steps:
            continue
        grid = sorted(set(lr_grid) | ({method.trained_lr} if method.trained_lr else set()))
        if method.lrs is not None:  # Meta-SGD adapts with its learned step sizes
            grid = [method.trained_lr or lr_grid[0]]
        totals: dict[tuple[int, float], list[float]] = {}
        for i, site in enumerate(sites):
            for d in range(draws):
                task = problem.few_shot_task(model, site, shots, task_generator(seed + 17, i, shots, d))
                support = task.support(method.params)
                for lr in grid:
                    with torch.enable_grad():
                        traj = adapt_along(loss_fn, method, support, positive_steps, lr, inner)
                    for s, p in traj.items():
                        totals.setdefault((s, lr), []).append(task.score(p)[problem.headline])
        means = {key: sum(v) / len(v) for key, v in totals.items()}
        for s in positive_steps:
            best_lr = max((lr for (ss, lr) in means if ss == s), key=lambda lr: sign * means[(s, lr)])
            method.lr_by_steps[s] = best_lr
        (best_s, best_lr) = max(means, key=lambda key: sign * means[key])
        method.best_steps, method.best_lr, method.selection_score = best_s, best_lr, means[(best_s, best_lr)]
        records += [{"method": method.name, "steps": s, "lr": lr, "val_" + problem.headline: m,
                     "chosen": method.lr_by_steps.get(s) == lr} for (s, lr), m in sorted(means.items())]
    return pd.DataFrame.from_records(records)


def evaluate_sites(
    problem: Problem,
    model: nn.Module,
    methods: Sequence[Method],
    sites: Sequence[Site],
    *,
    shots_grid: Sequence[int],
    steps_grid: Sequence[int],
    draws: int,
    seed: int,
    inner: InnerConfig,
    progress: Optional[Callable[[], None]] = None,
) -> pd.DataFrame:
    """Long table of every score: columns site, method, shots, steps, draw, metric, value."""
    loss_fn = problem.loss_fn(model)
    records = []
    for i, site in enumerate(sites):
        for k in shots_grid:
            for d in range(draws):
                task = problem.few_shot_task(model, site, k, task_generator(seed, i, k, d))
                for method in methods:
                    lr_for = lambda s, m=method: m.lr_by_steps.get(s, m.best_lr or m.trained_lr or 0.0)  # noqa: E731
                    for s, metrics in _score_method(loss_fn, method, task, steps_grid, inner, lr_for).items():
                        records += [{"site": site.site_id, "method": method.name, "shots": k, "steps": s,
                                     "draw": d, "metric": name, "value": float(v)} for name, v in metrics.items()]
                if progress is not None:
                    progress()
    return pd.DataFrame.from_records(records)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% interval per (site, method, shots, steps, metric), plus ``site = ALL`` pooled."""
    keys = ["site", "method", "shots", "steps", "metric"]
    pooled = rows.assign(site="ALL")
    out = []
    for key, grp in pd.concat([rows, pooled]).groupby(keys, sort=False):
        m, lo, hi = mean_ci95(grp["value"].tolist())
        out.append(dict(zip(keys, key), mean=m, ci95_low=lo, ci95_high=hi, n=len(grp)))
    return pd.DataFrame.from_records(out)


def paired_differences(rows: pd.DataFrame, metric: str, baseline: str = "fedavg+ft") -> pd.DataFrame:
    """Per (site, shots, steps): mean and 95% interval of (method - baseline) over the SAME draws."""
    sub = rows[rows["metric"] == metric]
    base = sub[sub["method"] == baseline].set_index(["site", "shots", "steps", "draw"])["value"]
    out = []
    for method in sorted(set(sub["method"]) - {baseline, "fedavg", "local"} - {m for m in sub["method"] if "(" in m}):
        mine = sub[sub["method"] == method].set_index(["site", "shots", "steps", "draw"])["value"]
        diff = (mine - base).dropna().reset_index()
        if diff.empty:
            continue
        for site_value, part in [*diff.groupby("site"), ("ALL", diff)]:
            for (k, s), grp in part.groupby(["shots", "steps"]):
                m, lo, hi = mean_ci95(grp["value"].tolist())
                out.append({"site": site_value, "method": method, "baseline": baseline, "shots": k, "steps": s,
                            "metric": metric, "mean_diff": m, "ci95_low": lo, "ci95_high": hi, "n": len(grp)})
    return pd.DataFrame.from_records(out)


def validation_fn(problem: Problem, sites: Sequence[Site], *, shots: int, steps: int, lr: float, draws: int,
                  seed: int, inner: InnerConfig) -> Callable[[nn.Module, Params], dict[str, float]]:
    """Few-shot adaptation on validation sites with fixed draws (for checkpoint selection)."""

    def validate(model: nn.Module, meta: Params) -> dict[str, float]:
        method = Method("val", meta, trained_lr=lr, lr_by_steps={steps: lr})
        rows = evaluate_sites(problem, model, [method], sites, shots_grid=[shots], steps_grid=[steps],
                              draws=draws, seed=seed + 31, inner=inner)
        return rows.groupby("metric")["value"].mean().to_dict()

    return validate
