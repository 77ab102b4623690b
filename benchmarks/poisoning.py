"""Poisoned updates against the aggregation rules, on R1 (digits few-shot; ``benchmarks/r1_workload.py``) or on a
vertical (``--vertical maintenance``: its preset and federation, ``benchmarks/poisoning_workloads.py``).

A seeded share of the training sites (``--fractions``, SIMULATED with ``fed.attack``: ``core/attacks.py``)
sends a boosted (``scale``: x``--scale``) or sign-flipped (``-scale`` x) update direction every round it is
sampled; the meta-initialization is trained with each aggregation rule (``mean``, coordinate ``median``,
``trimmed_mean``) and adapted on held-out tasks or sites (R1: 200 fresh 5-way tasks, 5 shots, 5 inner steps at
lr 0.05; a vertical: every test site, ``--draws`` support draws of ``--shots``, ``--steps`` steps at the inner
lr). Reported: the held-out headline after adaptation, mean [95% interval] pooled over seeds x tasks, and the
paired difference of each robust rule against ``mean`` under the same attack (same tasks; ``*``: the interval
excludes 0). The LAST line is JSON.

    PYTHONPATH=. python benchmarks/poisoning.py --seeds 0 1 2     # R1, about 10 minutes on 2 idle cores
    PYTHONPATH=. python benchmarks/poisoning.py --vertical maintenance --algorithm reptile --seeds 0 1 \
        --rounds 150 --clients 10 --set data.operators=40 data.test_sites=8 data.validation_sites=0 \
        --json-out benchmarks/results/poisoning_maintenance.json
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.attacks import is_attacker  # noqa: E402
from core.metrics import mean_ci95  # noqa: E402
from poisoning_workloads import Workload, r1_workload, vertical_workload  # noqa: E402


@dataclass
class Config:
    """Poisoning benchmark (R1 or a vertical)."""

    vertical: str = "r1"
    """r1 (the digits R1 workload) or a vertical name (fml verticals)."""
    preset: str = "quick"
    """A vertical's preset (its model, inner loop, server optimizer and data)."""
    set: list[str] = field(default_factory=list)
    """A vertical's run options over the preset, as dotted KEY=VALUE (e.g. data.operators=40)."""
    algorithm: str = "fomaml"
    """The meta-learning algorithm whose initialization is attacked."""
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
    """R1: held-out tasks."""
    steps: int = 5
    """Adaptation steps at evaluation."""
    shots: int = 2
    """A vertical: labelled examples (per class / units) a test site adapts on."""
    draws: int = 5
    """A vertical: support draws per test site."""
    threads: int = 1
    """torch threads."""
    json_out: str = ""
    """Also write the closing JSON line to this file."""


def _num(value: float) -> str:
    """3 decimals, or 3 significant digits for the huge errors of a model that blew up."""
    return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.2e}"


def summarize(values: list[float], baseline: Optional[list[float]]) -> tuple[str, dict]:
    """A table cell and JSON fields: mean [95% interval] of the finite scores, the paired difference against
    ``baseline`` (same tasks, pairs where both are finite), and how many scores were NaN/inf (a model whose
    training diverged scores NaN: the cell says so instead of hiding it in a mean)."""
    finite = [v for v in values if math.isfinite(v)]
    bad = len(values) - len(finite)
    row: dict = {"nonfinite": bad, "n": len(values)}
    if not finite:
        return f"diverged ({bad}/{len(values)} NaN)", {**row, "mean": None, "ci95": None}
    m, lo, hi = mean_ci95(finite)
    cell = f"{_num(m)} [{_num(lo)}, {_num(hi)}]" + (f" ({bad}/{len(values)} NaN)" if bad else "")
    row.update(mean=round(m, 4), ci95=[round(lo, 4), round(hi, 4)], median=round(float(np.median(finite)), 4))
    pairs = [a - b for a, b in zip(values, baseline or []) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) > 1:
        d, dlo, dhi = mean_ci95(pairs)
        cell += f" ({'+' if d >= 0 else ''}{_num(d)}{'*' if dlo > 0 or dhi < 0 else ''})"
        row["minus_mean"] = {"mean": round(d, 4), "ci95": [round(dlo, 4), round(dhi, 4)], "pairs": len(pairs)}
    return cell, row


def workload(cfg: Config, seed: int) -> Workload:
    options = dict(rounds=cfg.rounds, clients=cfg.clients, test_tasks=cfg.test_tasks, steps=cfg.steps,
                   algorithm=cfg.algorithm, vertical=cfg.vertical, preset=cfg.preset, overrides=cfg.set,
                   shots=cfg.shots, draws=cfg.draws)
    return r1_workload(seed, **options) if cfg.vertical == "r1" else vertical_workload(seed, **options)


def report(cfg: Config, work: Workload, seeds: list[int], settings: list[tuple[str, float]],
           scores: dict[tuple[str, float, str], list[float]], attackers: dict[str, dict[str, int]],
           seconds: float) -> dict:
    """Print the table of the seeds done so far and return (and write, with ``--json-out``) its JSON."""
    better = "higher" if work.higher_is_better else "lower"
    print(f"\n{work.description}: held-out {work.headline} ({better} is better), mean [95% interval] over seeds "
          f"{seeds} x tasks; in brackets, each rule minus `mean` (paired; * = interval excludes 0)")
    print(f"attacking training sites (of {len(work.train_sites)}) by share and seed: {attackers}")
    print("| attack | attacking sites | " + " | ".join(cfg.rules) + " |")
    print("|---|---|" + "---|" * len(cfg.rules))
    rows = []
    for attack, fraction in settings:
        cells = []
        for rule in cfg.rules:
            baseline = None if rule == "mean" else scores[(attack, fraction, "mean")]
            cell, row = summarize(scores[(attack, fraction, rule)], baseline)
            cells.append(cell)
            rows.append({"attack": attack, "fraction": fraction, "rule": rule, **row})
        print(f"| {attack} | {fraction:.0%} | " + " | ".join(cells) + " |")
    name = "R1" if cfg.vertical == "r1" else cfg.vertical
    out = {"workload": f"{name}-poisoning", "algorithm": cfg.algorithm, "rounds": cfg.rounds, "clients": cfg.clients,
           "training_sites": len(work.train_sites), "attackers": attackers, "seeds": seeds, "scale": cfg.scale,
           "steps": cfg.steps, "headline": work.headline, "higher_is_better": work.higher_is_better,
           "description": work.description, "seconds": round(seconds, 1), "rows": rows}
    if cfg.vertical != "r1":
        out.update(preset=cfg.preset, overrides=cfg.set, shots=cfg.shots, draws=cfg.draws)
    line = json.dumps(out)
    if cfg.json_out:
        Path(cfg.json_out).write_text(line + "\n")
    print(line, flush=True)
    return out


def main(cfg: Config) -> dict:
    torch.set_num_threads(cfg.threads)
    settings = [("none", 0.0)] + [(a, f) for a in cfg.attacks for f in cfg.fractions]
    scores: dict[tuple[str, float, str], list[float]] = {}
    attackers: dict[str, dict[str, int]] = {}  # fraction -> seed -> attacking training sites (drawn per site)
    start = time.perf_counter()
    out: dict = {}
    for i, seed in enumerate(cfg.seeds):
        work = workload(cfg, seed)
        for fraction in cfg.fractions:
            attackers.setdefault(f"{fraction:g}", {})[str(seed)] = sum(is_attacker(seed, s, fraction)
                                                                       for s in work.train_sites)
        for attack, fraction in settings:
            for rule in cfg.rules:
                values = work.score(dict(aggregation=rule, attack=attack, attack_fraction=fraction,
                                         attack_scale=cfg.scale))
                scores.setdefault((attack, fraction, rule), []).extend(values)
                print(f"seed {seed} {attack} {fraction:.0%} {rule}: {summarize(values, None)[0]}", flush=True)
        # after every seed: a long run that is stopped still leaves the table of the seeds it finished
        out = report(cfg, work, cfg.seeds[: i + 1], settings, scores, attackers, time.perf_counter() - start)
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
