"""Engine overhead on R1: milliseconds per FO-MAML round, in-process vs Flower, with plain FedAvg as the floor.

Engines (R1 of ``/work/shared/BENCHMARKS.md``: digits, 5-way sites, MLP 64-128-128-5, 5 inner steps at
lr 0.05, server Adam 1e-3):
- ``inprocess``: ``MetaLearner.run_round`` (vectorized clients), the reference;
- ``flower_simulation``: the FML ServerApp/ClientApp on Flower's simulation engine (Ray), one virtual
  SuperNode per training site (100), ``clients`` of them per round;
- ``flower_deployment``: a real SuperLink and ``deploy_nodes`` SuperNodes on 127.0.0.1 (``flwr run``),
  every node sampled every round, once per ``--isolation`` (``pipelines.federate_isolation``):
  ``subprocess`` (Flower's default, a fresh ClientApp process per message), ``process`` (one
  long-running ClientApp process per node), ``superexec`` (Flower's process isolation with an external
  ``flower-superexec``, still a process per message);
- ``plain_fedavg_*``: the floor, a minimal plain-FedAvg Flower app of the same model (``FedAvg.start``,
  5 local SGD steps on generated rows), same nodes and clients per round.
Each engine is compared with ``inprocess`` at the SAME clients per round (ratios). Round time is the
median over the measured rounds after the warm-up rounds (for Flower: the ServerApp's own timer).

    PYTHONPATH=. python benchmarks/engine_overhead.py [--clients 10] [--rounds 7] [--skip-deployment]
    PYTHONPATH=. python benchmarks/engine_overhead.py --skip-simulation --isolation subprocess process

Last line: one JSON object.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parent.parent
FLOOR_APP = Path(__file__).resolve().parent / "plain_fedavg_app"


@dataclass
class Config:
    """Engine-overhead benchmark on R1."""

    clients: int = 10
    """Clients per round for in-process and simulation."""
    sim_nodes: int = 100
    """Simulated SuperNodes (one per training site)."""
    deploy_nodes: int = 3
    """Real SuperNodes on loopback (all sampled every round)."""
    rounds: int = 7
    """Measured rounds (in-process and simulation)."""
    warmup: int = 2
    """Warm-up rounds, not measured."""
    deploy_rounds: int = 5
    """Measured rounds in deployment (each round starts fresh ClientApp processes: seconds per round)."""
    isolation: tuple[str, ...] = ("subprocess",)
    """How the deployed nodes run ClientApp messages, one deployment per value (subprocess, process, superexec)."""
    seed: int = 0
    """Seed of the federation, sampling and initialization."""
    skip_simulation: bool = False
    """Skip the Ray simulation engines."""
    skip_deployment: bool = False
    """Skip the loopback deployment engines."""
    keep_workdir: bool = False
    """Keep the temporary folder with the runs' logs, MLflow store and Flower state."""
    threads: int = 1
    """torch threads of every engine (in-process, and OMP_NUM_THREADS of the deployed ClientApp processes;
    Ray gives each 1-CPU simulation actor one thread). 1 avoids oversubscription on a shared 2-core machine."""


def median_after(values: list[float], warmup: int) -> float:
    measured = values[warmup:] or values
    return float(statistics.median(measured))


def fml_config(cfg: Config, clients: int, rounds: int, workdir: Path, name: str) -> dict:
    return {"vertical": "digits", "preset": "", "algorithm": "fomaml", "seed": cfg.seed, "experiment": f"overhead-{name}",
            "fed.rounds": rounds, "fed.clients_per_round": clients, "inner.steps": 5, "inner.lr": 0.05,
            "server.optimizer": "adam", "server.lr": 1e-3, "flower.finish": False, "flower.eval_roles": ",",
            "flower.min_available_clients": clients, "flower.round_timeout": 600.0, "flower.connect_timeout": 600.0,
            "flower.event_log": str(workdir / f"{name}-events.jsonl")}


# ------------------------------------------------------------------------------------------------ 1. in-process
def inprocess_ms(cfg: Config, clients: int) -> float:
    import torch

    from pipelines.federate_node import vertical_spec
    from pipelines.federate_server import resolve_run

    torch.set_num_threads(cfg.threads)
    run = resolve_run(fml_config(cfg, clients, cfg.warmup + cfg.rounds, Path(tempfile.gettempdir()), "inprocess"))
    problem = vertical_spec("digits").prepare(run.extra.data, run.seed)
    return median_after(timed_rounds(problem, run, cfg.warmup + cfg.rounds), cfg.warmup)


def timed_rounds(problem, run, rounds: int) -> list[float]:
    """Milliseconds of each of ``rounds`` in-process FO-MAML rounds (``MetaLearner.run_round``) of ``run``."""
    from core.learner import MetaLearner

    learner = MetaLearner(problem, "fomaml", run.inner, run.fed, run.server, run.seed)
    opt = learner.configure_optimizers()
    learner.optimizers = lambda *a, **k: opt
    times = []
    for r in range(rounds):
        start = time.perf_counter()
        learner.run_round(r)
        times.append(1000 * (time.perf_counter() - start))
    return times


# ------------------------------------------------------------------------------------------------ 2. simulation
def simulation_ms(cfg: Config, workdir: Path) -> tuple[float, float]:
    """(FML app, plain FedAvg floor) ms per round on Flower's simulation engine."""
    from flwr.simulation import run_simulation

    from pipelines.federate_server import simulate

    result = simulate(fml_config(cfg, cfg.clients, cfg.warmup + cfg.rounds, workdir, "simulation"),
                      num_nodes=cfg.sim_nodes, finish=False)
    fml = median_after([r.metrics["fed/round_ms"] for r in result.rounds], cfg.warmup)
    sys.path.insert(0, str(FLOOR_APP))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(FLOOR_APP), os.environ.get("PYTHONPATH", "")])
    import fml_plain_fedavg as floor

    out = workdir / "plain-simulation.json"
    run_simulation(server_app=floor.make_server(cfg.clients, cfg.warmup + cfg.rounds, str(out)),
                   client_app=floor.client, num_supernodes=cfg.sim_nodes,
                   backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False}})
    return fml, median_after(json.loads(out.read_text()), cfg.warmup)


# ------------------------------------------------------------------------------------------------ 3. deployment
def deployment_ms(cfg: Config, workdir: Path, isolation: str = "subprocess") -> tuple[float, float]:
    """(FML app, plain FedAvg floor) ms per round on a loopback SuperLink + SuperNodes."""
    from pipelines.federate_local import LocalFederation

    sites = [f"train-{i:03d}" for i in range(cfg.deploy_nodes)]
    rounds = cfg.warmup + cfg.deploy_rounds
    config = fml_config(cfg, cfg.deploy_nodes, rounds, workdir, f"deployment-{isolation}")
    env = {"FML_HOME": os.environ["FML_HOME"], "OMP_NUM_THREADS": str(cfg.threads)}
    with LocalFederation(sites, workdir / f"deploy-{isolation}", env=env, isolation=isolation) as fed:
        fed.run(config, timeout=3600, name="fml")
        events = [json.loads(line) for line in Path(config["flower.event_log"]).read_text().splitlines()]
        fml = median_after([e["round_ms"] for e in events if e["kind"] == "round_end"], cfg.warmup)
        out = workdir / f"plain-deployment-{isolation}.json"
        fed.run({"clients": cfg.deploy_nodes, "num-server-rounds": rounds, "output": str(out)}, timeout=3600,
                name="plain", app_dir=FLOOR_APP)
        floor = median_after(json.loads(out.read_text()), cfg.warmup)
    return fml, floor


def main(cfg: Config) -> dict:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    from pipelines.federate_isolation import get_isolation

    for isolation in cfg.isolation:
        get_isolation(isolation)  # an unknown name fails now, not after minutes of other engines
    workdir = Path(tempfile.mkdtemp(prefix="fml-engine-overhead-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # log to a throw-away store: $FML_HOME/mlflow.db
    os.environ["FML_HOME"] = str(workdir / "fml")
    rows = []
    # 1. simulation setting: cfg.clients per round out of cfg.sim_nodes sites
    row = {"clients": cfg.clients, "inprocess_ms": inprocess_ms(cfg, cfg.clients)}
    if not cfg.skip_simulation:
        row["flower_simulation_ms"], row["plain_fedavg_simulation_ms"] = simulation_ms(cfg, workdir)
        row["simulation_vs_inprocess"] = row["flower_simulation_ms"] / row["inprocess_ms"]
        row["simulation_vs_floor"] = row["flower_simulation_ms"] / row["plain_fedavg_simulation_ms"]
    rows.append(row)
    # 2. deployment setting: every one of cfg.deploy_nodes real nodes per round, once per isolation
    if not cfg.skip_deployment:
        base = inprocess_ms(cfg, cfg.deploy_nodes)
        for isolation in cfg.isolation:
            row = {"clients": cfg.deploy_nodes, "isolation": isolation, "inprocess_ms": base}
            row["flower_deployment_ms"], row["plain_fedavg_deployment_ms"] = deployment_ms(cfg, workdir, isolation)
            row["deployment_vs_inprocess"] = row["flower_deployment_ms"] / row["inprocess_ms"]
            row["deployment_vs_floor"] = row["flower_deployment_ms"] / row["plain_fedavg_deployment_ms"]
            rows.append(row)
        default = next((r for r in rows if r.get("isolation") == "subprocess"), None)
        for row in rows:
            if default is not None and "isolation" in row:
                row["deployment_vs_subprocess"] = row["flower_deployment_ms"] / default["flower_deployment_ms"]
    print(f"\nEngine overhead on R1 (FO-MAML, ms per round, median after {cfg.warmup} warm-up rounds)")
    print(f"{'clients':>8} {'engine':<34} {'ms/round':>10} {'x in-process':>13} {'x floor':>9}")
    for i, row in enumerate(rows):
        if i == 0 or "isolation" not in rows[i - 1]:  # once per setting, not per isolation
            print(f"{row['clients']:>8} {'in-process (vmap)':<34} {row['inprocess_ms']:>10.1f} {1.0:>13.1f} {'':>9}")
        for kind in ("simulation", "deployment"):
            if f"flower_{kind}_ms" in row:
                ms, floor = row[f"flower_{kind}_ms"], row[f"plain_fedavg_{kind}_ms"]
                label = f"Flower {kind}" + (f" {row['isolation']}" if "isolation" in row else "")
                print(f"{row['clients']:>8} {label + ' (FML)':<34} {ms:>10.1f} "
                      f"{ms / row['inprocess_ms']:>13.1f} {ms / floor:>9.2f}")
                print(f"{row['clients']:>8} {label + ' (floor)':<34} {floor:>10.1f} "
                      f"{floor / row['inprocess_ms']:>13.1f} {1.0:>9.2f}")
    result = {"workload": "R1", "algorithm": "fomaml", "sim_nodes": cfg.sim_nodes, "deploy_nodes": cfg.deploy_nodes,
              "isolation": list(cfg.isolation), "warmup": cfg.warmup, "load_average_1m": os.getloadavg()[0],
              "cpus": os.cpu_count(), "results": rows}
    if cfg.keep_workdir:
        print(f"logs and MLflow store kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
