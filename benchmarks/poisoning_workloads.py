"""The workloads of ``benchmarks/poisoning.py``: R1 (digits few-shot, ``benchmarks/r1_workload.py``) and any
vertical of the toolkit (its preset, its federation, its held-out test sites and headline metric).

A workload trains ONE meta-initialization under a federated config (the aggregation rule and the simulated
attack vary) and returns its held-out scores after adaptation, one per (test task or site, draw), always in
the same order for a seed: rules compare paired on the same tasks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from core.config import FederatedConfig, ServerConfig
from core.learner import MetaLearner, fit_meta_learner
from core.tasks import sample_episode


@dataclass
class Workload:
    """What one seed of the benchmark trains and scores.

    Args:
        description: one line for the printed table (data, algorithm, protocol).
        headline: the metric scored (``accuracy``, ``rmse_last`` ...).
        higher_is_better: direction of ``headline``.
        score: ``score(fed_changes)`` trains the meta-initialization with the workload's federated config
            updated by ``fed_changes`` (aggregation, attack ...) and returns its held-out scores.
        train_sites: the training site ids (who may attack: :func:`core.attacks.is_attacker`).
    """

    description: str
    headline: str
    higher_is_better: bool
    score: Callable[[dict[str, Any]], list[float]]
    train_sites: list[str]


def r1_workload(seed: int, *, rounds: int, clients: int, test_tasks: int, steps: int, algorithm: str,
                **_: Any) -> Workload:
    """R1: 100 digits training sites, ``test_tasks`` held-out 5-way tasks (5 shots), adapted ``steps`` steps."""
    from r1_quality import EVAL_SPEC, INNER, evaluate
    from r1_workload import r1_problem

    problem = r1_problem(seed, test_tasks, 1, False)
    gen = torch.Generator().manual_seed(12345)
    tasks = [sample_episode(site, EVAL_SPEC, gen) for site in problem.federation.role("test")]
    model = problem.make_model()
    base = FederatedConfig(rounds=rounds, clients_per_round=clients, val_every=rounds)

    def score(changes: dict[str, Any]) -> list[float]:
        learner = MetaLearner(problem, algorithm, INNER, dataclasses.replace(base, **changes),
                              ServerConfig("adam", 1e-3), seed=seed)
        fit_meta_learner(learner, progress=False)
        return evaluate(problem, model, [learner.meta_params()] * len(tasks), tasks, [steps])[steps]

    return Workload(f"R1 (digits, 5-way 5-shot) {algorithm}, {rounds} rounds, accuracy after {steps} steps",
                    "accuracy", True, score, list(problem.train_site_ids()))


def vertical_workload(seed: int, *, vertical: str, preset: str, overrides: list[str], rounds: int, clients: int,
                      shots: int, steps: int, draws: int, algorithm: str, **_: Any) -> Workload:
    """A vertical's federation from ``preset`` + ``overrides`` (dotted KEY=VALUE); the meta-initialization is
    adapted on each held-out test site ``draws`` times with ``shots`` labelled examples for ``steps`` steps at
    the algorithm's inner learning rate (one fixed protocol for every rule, no per-rule tuning)."""
    import verticals
    from core.config import algorithm_settings
    from core.evaluation import Method, evaluate_sites
    from core.vertical import VERTICALS
    from heldout_common import with_overrides
    from pipelines.config import load_preset

    verticals.load_all()
    spec = VERTICALS.get(vertical)
    run_cfg = with_overrides(load_preset(spec, preset), overrides)
    problem = spec.build(run_cfg.data, seed)
    settings = algorithm_settings(run_cfg, algorithm)
    base = dataclasses.replace(run_cfg.fed, rounds=rounds, clients_per_round=clients, val_every=rounds)
    model = problem.make_model()
    test = problem.federation.role("test")

    def score(changes: dict[str, Any]) -> list[float]:
        learner = MetaLearner(problem, algorithm, settings.inner, dataclasses.replace(base, **changes),
                              settings.server, seed=seed)
        fit_meta_learner(learner, progress=False)
        method = Method(algorithm, learner.meta_params(), trained_lr=settings.inner.lr, inner=settings.inner)
        rows = evaluate_sites(problem, model, [method], test, shots_grid=[shots], steps_grid=[steps], draws=draws,
                              seed=seed, inner=run_cfg.inner)
        rows = rows[(rows["metric"] == problem.headline) & (rows["steps"] == steps)]
        return rows.sort_values(["site", "draw"])["value"].astype(float).tolist()

    train = len(problem.train_site_ids())
    return Workload(f"{vertical} ({preset} preset{', ' + ' '.join(overrides) if overrides else ''}; {train} training "
                    f"sites, {len(test)} test sites) {algorithm}, {rounds} rounds of {clients} clients, "
                    f"{problem.headline} after {steps} steps on {shots} shots", problem.headline,
                    problem.higher_is_better, score, list(problem.train_site_ids()))
