"""Diversity sampling and quality weighting against uniform sampling and weights, on R1 (issue 16, item 5).

R1 of ``/work/shared/BENCHMARKS.md`` (``benchmarks/r1_quality.py``: 100 digits sites, FO-MAML, 10 clients per
round, 5 inner steps at lr 0.05, server Adam 1e-3), trained once per (seed, setting):

- ``uniform``: uniform sampling, uniform weights (the default);
- ``diversity``: clients spread over 10 k-means strata of the sites' descriptors (``fed.sampler=diversity``);
- ``quality``: weights by size x (1 + clipped loss improvement) (``fed.weighting=quality``);
- ``diversity+quality``: both.

Every setting of a seed is scored on the SAME 200 held-out tasks and draws (accuracy after ``steps`` adaptation
steps); the table gives each setting's mean and its paired difference from ``uniform`` with a 95% interval over
all (seed, task) pairs.

    PYTHONPATH=. python benchmarks/sampling_weighting.py --seeds 0 1 2      # ~10 min on 2 idle cores

Last line: one JSON object.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.config import FederatedConfig, ServerConfig  # noqa: E402
from core.learner import MetaLearner, fit_meta_learner  # noqa: E402
from core.metrics import mean_ci95  # noqa: E402
from core.tasks import sample_episode  # noqa: E402
from r1_quality import EVAL_SPEC, INNER, evaluate  # noqa: E402
from r1_workload import r1_problem  # noqa: E402

SETTINGS = {"uniform": ("uniform", "uniform"), "diversity": ("diversity", "uniform"),
            "quality": ("uniform", "quality"), "diversity+quality": ("diversity", "quality")}


@dataclass
class Config:
    """Sampling/weighting benchmark on R1."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds (sites, initialization, rounds)."""
    rounds: int = 500
    """Federated rounds per training."""
    clients: int = 10
    """Clients per round (and strata of the diversity sampler)."""
    steps: list[int] = field(default_factory=lambda: [0, 5])
    """Adaptation steps reported."""
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    """Settings to train (uniform always first: the reference)."""
    test_tasks: int = 200
    """Held-out tasks per seed."""
    threads: int = 1
    """torch threads."""
    eval_seed: int = 12345
    """Seeds the held-out draws."""


def main(cfg: Config) -> dict:
    torch.set_num_threads(cfg.threads)
    settings = ["uniform", *[s for s in cfg.settings if s != "uniform"]]
    acc: dict[str, dict[int, list[float]]] = {s: {k: [] for k in cfg.steps} for s in settings}
    seconds: dict[str, float] = {s: 0.0 for s in settings}
    for seed in cfg.seeds:
        problem = r1_problem(seed, cfg.test_tasks, test_seed=1000 + seed)
        gen = torch.Generator().manual_seed(cfg.eval_seed + seed)
        tasks = [sample_episode(site, EVAL_SPEC, gen) for site in problem.federation.role("test")]
        model = problem.make_model()
        for name in settings:
            sampler, weighting = SETTINGS[name]
            fed = FederatedConfig(rounds=cfg.rounds, clients_per_round=cfg.clients, val_every=cfg.rounds,
                                  sampler=sampler, weighting=weighting)
            learner = MetaLearner(problem, "fomaml", INNER, fed, ServerConfig("adam", 1e-3), seed=seed)
            start = time.perf_counter()
            fit_meta_learner(learner, progress=False)
            seconds[name] += time.perf_counter() - start
            scores = evaluate(problem, model, [learner.meta_params()] * len(tasks), tasks, cfg.steps)
            for k in cfg.steps:
                acc[name][k] += scores[k]
            print(f"seed {seed} {name}: " + ", ".join(f"{k} steps {sum(scores[k]) / len(tasks):.3f}"
                                                      for k in cfg.steps), flush=True)
    print(f"\nR1 FO-MAML, {cfg.rounds} rounds, seeds {cfg.seeds}: held-out accuracy, mean and paired difference "
          f"from uniform [95% interval] over {len(acc['uniform'][cfg.steps[0]])} (seed, task) pairs; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| setting | " + " | ".join(f"{k} steps | vs uniform" for k in cfg.steps) + " |")
    print("|---|" + "---|---|" * len(cfg.steps))
    rows = []
    for name in settings:
        cells = []
        for k in cfg.steps:
            mean, lo, hi = mean_ci95(acc[name][k])
            dmean, dlo, dhi = mean_ci95([a - b for a, b in zip(acc[name][k], acc["uniform"][k])])
            cells.append(f"{mean:.3f} | {dmean:+.3f} [{dlo:+.3f}, {dhi:+.3f}]")
            rows.append({"method": name, "steps": k, "mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)],
                         "vs_uniform": round(dmean, 4), "vs_uniform_ci95": [round(dlo, 4), round(dhi, 4)]})
        print(f"| {name} | " + " | ".join(cells) + " |")
    out = {"workload": "R1", "benchmark": "sampling_weighting", "algorithm": "fomaml", "rounds": cfg.rounds,
           "seeds": cfg.seeds, "rows": rows, "train_seconds": {s: round(v, 1) for s, v in seconds.items()},
           "load_average_1m": os.getloadavg()[0]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
