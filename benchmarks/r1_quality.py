"""R1 quality: held-out few-shot accuracy after 0 / 5 / 10 adaptation steps for ``local`` (random init),
``fedavg`` (+ fine-tune), ``fomaml`` and ``maml`` after 500 federated rounds (workload R1 of
``../shared/BENCHMARKS.md``).

Training: 100 digits sites (each its own 5-way task), 10 clients per round, 5 inner SGD steps at lr
0.05; server Adam 1e-3 for the meta-learning algorithms, SGD 1.0 for FedAvg (whose clients train on
support + query). Evaluation: 200 fresh held-out tasks from a separate seed (``benchmarks/r1_workload.py``;
``--heldout-images`` restricts them to images no training site saw), 5 shots + 15 query per class, the
SAME draw for every method; adaptation = ``core.adapt.adapt`` at the inner lr. Prints a table with 95% intervals, then as its LAST line the JSON of BENCHMARKS.md.

    python benchmarks/r1_quality.py                  # a few minutes on 2 idle cores
    python benchmarks/r1_quality.py --rounds 100     # a quicker look (the JSON says which rounds)
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
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # opacus installs a top-level ``benchmarks`` package

from core.adapt import adapt  # noqa: E402
from core.algorithms import InnerConfig  # noqa: E402
from core.config import FederatedConfig, ServerConfig  # noqa: E402
from core.learner import MetaLearner, fit_meta_learner  # noqa: E402
from core.metrics import mean_ci95  # noqa: E402
from core.problem import Problem  # noqa: E402
from core.tasks import EpisodeSpec, sample_episode  # noqa: E402
from core.types import Episode, Params  # noqa: E402
from r1_workload import r1_problem  # noqa: E402


INNER = InnerConfig(steps=5, lr=0.05)
#: method -> (algorithm, server optimizer); ``local`` trains nothing federated.
TRAINED = {
    "fedavg": ("fedavg", ServerConfig("sgd", 1.0)),
    "fomaml": ("fomaml", ServerConfig("adam", 1e-3)),
    "maml": ("maml", ServerConfig("adam", 1e-3)),
}
EVAL_SPEC = EpisodeSpec(shots=5, query=15, by="class", num_classes=5)


@dataclass
class Config:
    """R1 quality benchmark."""

    rounds: int = 500
    """Federated rounds per algorithm."""
    clients: int = 10
    """Clients per round."""
    steps: list[int] = field(default_factory=lambda: [0, 5, 10])
    """Adaptation steps reported (JSON keys)."""
    test_tasks: int = 200
    """Fresh held-out tasks."""
    test_seed: int = 1
    """Seeds the held-out tasks (separate from ``seed``)."""
    heldout_images: bool = False
    """Test tasks draw only from images no training site saw (harder than the spec's all-image tasks)."""
    methods: list[str] = field(default_factory=lambda: list(TRAINED))
    """Federated methods to train and report (``local`` is always reported)."""
    threads: int = 2
    """``torch.set_num_threads`` (R1 reference: 2)."""
    seed: int = 0
    """Seeds the sites, initializations and round draws."""
    eval_seed: int = 12345
    """Seeds the held-out support/query draws and the ``local`` initializations (separate from training)."""




def train(problem: Problem, algorithm: str, server: ServerConfig, cfg: Config) -> tuple[MetaLearner, float]:
    fed = FederatedConfig(rounds=cfg.rounds, clients_per_round=cfg.clients, val_every=cfg.rounds)
    learner = MetaLearner(problem, algorithm, INNER, fed, server, seed=cfg.seed)
    start = time.perf_counter()
    fit_meta_learner(learner, progress=False)
    return learner, time.perf_counter() - start


def accuracy(model: torch.nn.Module, params: Params, batch: tuple) -> float:
    with torch.no_grad():
        return float((functional_call(model, params, (batch[0],)).argmax(-1) == batch[1]).float().mean())


def evaluate(problem: Problem, model: torch.nn.Module, inits: list[Params], tasks: list[Episode],
             steps: list[int]) -> dict[int, list[float]]:
    """Accuracy per task after each number of steps; ``inits[i]`` is the initialization for task ``i``."""
    loss_fn = problem.loss_fn(model)
    out: dict[int, list[float]] = {s: [] for s in steps}
    for init, task in zip(inits, tasks):
        for s in steps:
            adapted = adapt(loss_fn, init, task.support, s, INNER.lr)
            out[s].append(accuracy(model, adapted, task.query))
    return out


def main(cfg: Config) -> dict:
    # 1. the R1 federation: 100 training sites; 200 fresh test tasks from a separate seed
    torch.set_num_threads(cfg.threads)
    problem = r1_problem(cfg.seed, cfg.test_tasks, cfg.test_seed, cfg.heldout_images)
    test_sites = problem.federation.role("test")
    gen = torch.Generator().manual_seed(cfg.eval_seed)
    tasks = [sample_episode(site, EVAL_SPEC, gen) for site in test_sites]

    # 2. federated training, one Trainer.fit per algorithm
    unknown = sorted(set(cfg.methods) - set(TRAINED))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(TRAINED)}")
    learners, seconds = {}, {}
    for method in cfg.methods:
        algorithm, server = TRAINED[method]
        learners[method], seconds[method] = train(problem, algorithm, server, cfg)
        print(f"trained {method}: {cfg.rounds} rounds in {seconds[method]:.1f} s", flush=True)

    # 3. held-out adaptation: the same draws for every method
    model = problem.make_model()  # only its structure is used (functional_call)
    results: dict[str, dict[int, list[float]]] = {}
    local_inits = []
    for i in range(len(tasks)):
        torch.manual_seed(cfg.eval_seed + i)
        local_inits.append({k: v.detach() for k, v in problem.make_model().named_parameters()})
    results["local"] = evaluate(problem, model, local_inits, tasks, cfg.steps)
    for method, learner in learners.items():
        meta = learner.meta_params()
        results[method] = evaluate(problem, model, [meta] * len(tasks), tasks, cfg.steps)

    # 4. the table, then the JSON line
    images = "held-out images only" if cfg.heldout_images else "all images"
    print(f"R1 quality after {cfg.rounds} rounds: held-out accuracy, mean [95% interval] over {len(tasks)} tasks "
          f"({images}); {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print("| method | " + " | ".join(f"{s} steps" for s in cfg.steps) + " |")
    print("|---|" + "---|" * len(cfg.steps))
    accuracy_json: dict[str, dict[str, float]] = {}
    for method, by_steps in results.items():
        cells, accuracy_json[method] = [], {}
        for s in cfg.steps:
            mean, lo, hi = mean_ci95(by_steps[s])
            cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]")
            accuracy_json[method][str(s)] = round(mean, 4)
        print(f"| {method} | " + " | ".join(cells) + " |")
    print("train seconds: " + ", ".join(f"{m} {s:.1f}" for m, s in seconds.items()))
    print("reference (BENCHMARKS.md): local .200/.207/.261, fedavg+ft .203/.701/.816, fomaml .201/.928/.957, "
          "maml .200/.964/.969; train s fedavg 6.4, fomaml 5.0, maml 8.5")
    out = {"workload": "R1", "rounds": cfg.rounds, "accuracy": accuracy_json,
           "train_seconds": {m: round(s, 2) for m, s in seconds.items()}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
