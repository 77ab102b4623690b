"""R1 round throughput: milliseconds per federated round, vectorized (one ``vmap`` call) vs a per-client
loop, first vs second order, 10 and 50 clients per round (workload R1 of ``../shared/BENCHMARKS.md``).

A round is exactly ``MetaLearner.run_round``: sample clients, draw and stack their episodes, compute
every client's update, aggregate, step the server optimizer (Adam 1e-3). Second order = ``maml``,
first order = ``fomaml``; 5 inner SGD steps at lr 0.05 on 5-way 5-shot (+15 query per class) tasks,
MLP 64-128-128-5. The vmap columns time the call's traced replay (``--trace-after 1``, core/replay.py;
``--trace-after 0``: the eager vmap call). Prints a table, then as its LAST line the JSON object defined in
BENCHMARKS.md.

    python benchmarks/round_throughput.py            # about 1 minute on 2 idle cores
    python benchmarks/round_throughput.py --rounds 15 --clients 10 50
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # opacus installs a top-level ``benchmarks`` package

from core.algorithms import InnerConfig  # noqa: E402
from core.config import FederatedConfig, ServerConfig  # noqa: E402
from core.learner import MetaLearner  # noqa: E402
from core.problem import Problem  # noqa: E402
from r1_workload import r1_problem  # noqa: E402


@dataclass
class TimingConfig:
    """What every R1 round-timing benchmark takes."""

    clients: list[int] = field(default_factory=lambda: [10, 50])
    """Clients per round (one result row each)."""
    rounds: int = 9
    """Timed rounds per configuration (the median is reported; BENCHMARKS.md asks for >= 7)."""
    warmup: int = 2
    """Untimed rounds first (tracing, allocator warm-up)."""
    threads: int = 2
    """``torch.set_num_threads`` (R1 reference: 2)."""
    seed: int = 0
    """Seeds the sites, the initialization and the round draws."""
    clock: str = "wall"
    """What the JSON line reports: ``wall`` (BENCHMARKS.md) or ``cpu`` (process CPU time: steadier on a
    loaded, shared machine; with ``--threads 1`` it is the work of the round)."""


@dataclass
class Config(TimingConfig):
    """R1 throughput benchmark."""

    trace_after: int = 1
    """``fed.trace_after`` of the vmap columns: 1 = the call's traced replay (core/replay.py) from the first
    warm-up round on, a long run's steady state (its default starts at round 10); 0 = the eager vmap call."""


MODES = {  # column -> (algorithm, vectorize)
    "loop_so_ms": ("maml", False),
    "loop_fo_ms": ("fomaml", False),
    "vmap_so_ms": ("maml", True),
    "vmap_fo_ms": ("fomaml", True),
}


class TimedLearner(MetaLearner):
    """The production ``MetaLearner`` with a plain server optimizer, so ``run_round`` runs without a Trainer."""

    def optimizers(self, use_pl_optimizer: bool = True):  # noqa: D102
        if not hasattr(self, "_server_opt"):
            self._server_opt = self.configure_optimizers()
        return self._server_opt


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def time_rounds(problem: Problem, algorithm: str, vectorize: bool, clients: int, cfg: Config) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``cfg.rounds`` rounds after ``cfg.warmup`` untimed ones."""
    fed = FederatedConfig(rounds=cfg.warmup + cfg.rounds, clients_per_round=clients, vectorize=vectorize,
                          trace_after=cfg.trace_after)
    learner = TimedLearner(problem, algorithm, InnerConfig(steps=5, lr=0.05), fed, ServerConfig("adam", 1e-3), cfg.seed)
    wall, cpu = [], []
    for r in range(cfg.warmup + cfg.rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        learner.run_round(r)
        if r >= cfg.warmup:
            wall.append((time.perf_counter() - start) * 1e3)
            cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main(cfg: Config) -> dict:
    if cfg.clock not in ("wall", "cpu"):
        raise ValueError(f"--clock must be wall or cpu, got {cfg.clock!r}")
    if cfg.rounds < 1 or cfg.warmup < 0:
        raise ValueError(f"--rounds must be >= 1 and --warmup >= 0, got {cfg.rounds} and {cfg.warmup}")

    # 1. the R1 federation: 100 training sites, each its own 5-way task
    torch.set_num_threads(cfg.threads)
    problem = r1_problem(cfg.seed, test_tasks=0)
    base_rss = peak_rss_mb()

    # 2. time every (clients, mode)
    results, other = [], []
    for clients in cfg.clients:
        row: dict = {"clients": clients}
        alt: dict = {}
        for column, (algorithm, vectorize) in MODES.items():
            wall, cpu = time_rounds(problem, algorithm, vectorize, clients, cfg)
            row[column], alt[column] = (round(wall, 2), round(cpu, 2)) if cfg.clock == "wall" else (round(cpu, 2), round(wall, 2))
        row["speedup_fo"] = round(row["loop_fo_ms"] / row["vmap_fo_ms"], 2)
        row["speedup_so"] = round(row["loop_so_ms"] / row["vmap_so_ms"], 2)
        row["peak_rss_mb"] = round(peak_rss_mb(), 1)
        results.append(row)
        other.append(alt)

    # 3. the human table, then the JSON line
    load = os.getloadavg()[0]
    other_clock = "cpu" if cfg.clock == "wall" else "wall"
    print(f"R1 round throughput: ms per round ({cfg.clock} clock; {other_clock} clock in brackets), median of "
          f"{cfg.rounds} after {cfg.warmup} warm-up, vmap replayed from round {cfg.trace_after} (0 = never); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} on {os.cpu_count()} CPUs; RSS after imports {base_rss:.0f} MB")
    print("| clients | loop 2nd | loop 1st | vmap 2nd | vmap 1st | speedup 1st | speedup 2nd | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r, a in zip(results, other):
        cells = " | ".join(f"{r[c]} ({a[c]})" for c in MODES)
        print(f"| {r['clients']} | {cells} | {r['speedup_fo']}x | {r['speedup_so']}x | {r['peak_rss_mb']} |")
    print("reference (BENCHMARKS.md, 2 idle cores, wall): 10 clients 37.3 / 16.8 / 16.4 / 6.6; "
          "50 clients 139.9 / 61.7 / 84.4 / 22.8")
    out = {"workload": "R1", "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
