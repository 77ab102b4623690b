"""Poisoned updates against the aggregation rules, on R1 (digits few-shot; ``benchmarks/r1_workload.py``).

A seeded share of the 100 training sites (``--fractions``, SIMULATED with ``fed.attack``: ``core/attacks.py``)
sends a boosted (``scale``: x``--scale``) or sign-flipped (``-scale`` x) FO-MAML direction every round it is
sampled; the meta-initialization is trained with each aggregation rule (``mean``, coordinate ``median``,
``trimmed_mean``) and adapted on 200 fresh held-out tasks (5 shots, 5 inner steps at lr 0.05). Reported:
held-out accuracy after adaptation, mean [95% interval] pooled over seeds x tasks, and the paired difference
of each robust rule against ``mean`` under the same attack (same tasks). The LAST line is JSON.

    PYTHONPATH=. python benchmarks/poisoning.py --seeds 0 1 2     # about 10 minutes on 2 idle cores
"""
from __future__ import annotations

import json
import sys
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


@dataclass
class Config:
    """Poisoning benchmark (R1, FO-MAML)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds (sites, attackers, initializations, rounds); the held-out tasks are the same for all."""
    rounds: int = 300
    """Federated rounds per model."""
    clients: int = 10
    """Clients per round."""
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.3])
    """Shares of attacking training sites (0 is always run as the clean reference)."""
    attacks: list[str] = field(default_factory=lambda: ["scale", "sign_flip"])
    """Attacks (core/attacks.py)."""
    scale: float = 10.0
    """Attack factor."""
    rules: list[str] = field(default_factory=lambda: ["mean", "median", "trimmed_mean"])
    """Aggregation rules (fed.aggregation)."""
    test_tasks: int = 200
    """Held-out tasks."""
    steps: int = 5
    """Adaptation steps at evaluation."""
    threads: int = 1
    """torch threads."""
    json_out: str = ""
    """Also write the closing JSON line to this file."""


def main(cfg: Config) -> dict:
    torch.set_num_threads(cfg.threads)
    settings = [("none", 0.0)] + [(a, f) for a in cfg.attacks for f in cfg.fractions]
    acc: dict[tuple[str, float, str], list[float]] = {}
    for seed in cfg.seeds:
        problem = r1_problem(seed, cfg.test_tasks, 1, False)
        gen = torch.Generator().manual_seed(12345)
        tasks = [sample_episode(site, EVAL_SPEC, gen) for site in problem.federation.role("test")]
        model = problem.make_model()
        for attack, fraction in settings:
            for rule in cfg.rules:
                fed = FederatedConfig(rounds=cfg.rounds, clients_per_round=cfg.clients, val_every=cfg.rounds,
                                      aggregation=rule, attack=attack, attack_fraction=fraction,
                                      attack_scale=cfg.scale)
                learner = MetaLearner(problem, "fomaml", INNER, fed, ServerConfig("adam", 1e-3), seed=seed)
                fit_meta_learner(learner, progress=False)
                scores = evaluate(problem, model, [learner.meta_params()] * len(tasks), tasks, [cfg.steps])[cfg.steps]
                acc.setdefault((attack, fraction, rule), []).extend(scores)
                print(f"seed {seed} {attack} {fraction:.0%} {rule}: {sum(scores) / len(scores):.3f}", flush=True)
    print(f"\nR1 FO-MAML, {cfg.rounds} rounds: held-out accuracy after {cfg.steps} steps, mean [95% interval] over "
          f"seeds {cfg.seeds} x {cfg.test_tasks} tasks; in brackets, each rule minus `mean` (paired)")
    print("| attack | attacking sites | " + " | ".join(cfg.rules) + " |")
    print("|---|---|" + "---|" * len(cfg.rules))
    rows = []
    for attack, fraction in settings:
        cells = []
        for rule in cfg.rules:
            values = acc[(attack, fraction, rule)]
            m, lo, hi = mean_ci95(values)
            cell = f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
            if rule != "mean":
                d, dlo, dhi = mean_ci95([a - b for a, b in zip(values, acc[(attack, fraction, "mean")])])
                cell += f" ({d:+.3f}{'*' if dlo > 0 or dhi < 0 else ''})"
            cells.append(cell)
            rows.append({"attack": attack, "fraction": fraction, "rule": rule, "mean": round(m, 4),
                         "ci95": [round(lo, 4), round(hi, 4)]})
        print(f"| {attack} | {fraction:.0%} | " + " | ".join(cells) + " |")
    out = {"workload": "R1-poisoning", "algorithm": "fomaml", "rounds": cfg.rounds, "seeds": cfg.seeds,
           "scale": cfg.scale, "steps": cfg.steps, "rows": rows}
    line = json.dumps(out)
    if cfg.json_out:
        Path(cfg.json_out).write_text(line + "\n")
    print(line)
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
