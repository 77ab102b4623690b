"""Site scale on R1: preparation time, milliseconds per round and peak memory at 1k / 10k / 100k training sites.

Workload: R1 of ``/work/shared/BENCHMARKS.md`` (digits 5-way tasks, MLP 64-128-128-5, FO-MAML, 5 inner steps at
lr 0.05, server Adam 1e-3, ``clients`` per round) with ``--data.train-sites N``. Sites are lazy handles
(:class:`core.tasks.LazySite`): a round builds the rows of its clients only. Every figure comes from a FRESH
process, so its peak RSS (``ru_maxrss``, libraries included) is that size's alone:

- ``inprocess``: prepare the federation, then ``MetaLearner.run_round`` for ``warmup + rounds`` rounds (median
  ms after the warm-up), torch + Lightning + MLflow imported as ``fml run`` does;
- ``evaluate``: the user's command, ``fml evaluate digits --preset quick --fed.rounds R --algorithms fomaml
  --data.train-sites N`` (FedAvg + FO-MAML, validation search, held-out tables, MLflow logging): wall and peak RSS;
- ``flower_simulation``: the same FML app on Flower's simulation engine (Ray), one virtual SuperNode per
  training and validation site, ``clients`` sampled per round; the ServerApp's own round timer; memory is the
  peak of the summed RSS of the whole process tree (Ray's processes included), sampled every 0.5 s. Each size
  has ``simulation_timeout`` seconds; a size that fails or times out is reported with why, and larger sizes
  are not tried.

Targets (issue 16): 100k sites <= 2.0 GB peak RSS with a per-round time within 1.2x of the 1k-site run.

    PYTHONPATH=. python benchmarks/site_scale.py                      # ~15 min on 2 idle cores
    PYTHONPATH=. python benchmarks/site_scale.py --sites 1000 10000 --skip-simulation

Last line: one JSON object.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # opacus installs a top-level ``benchmarks`` package


@dataclass
class Config:
    """Site-scale benchmark on R1."""

    sites: list[int] = field(default_factory=lambda: [1000, 10000, 100000])
    """Training-site counts."""
    clients: int = 10
    """Clients per round."""
    rounds: int = 20
    """Measured in-process rounds."""
    warmup: int = 3
    """Warm-up rounds, not measured."""
    evaluate_rounds: int = 100
    """Rounds of the ``fml evaluate`` run per size (0 skips it)."""
    simulation_rounds: int = 5
    """Rounds on Flower's simulation engine (the first is the warm-up)."""
    simulation_timeout: float = 900.0
    """Seconds each simulation size may take before it counts as failed."""
    skip_simulation: bool = False
    """Skip Flower's simulation engine."""
    seed: int = 0
    """Seed of the federation, sampling and initialization."""
    child: str = ""
    """Internal: run one measurement (inprocess | evaluate | simulation) in this process."""
    child_sites: int = 0
    """Internal: the training-site count of the child measurement."""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fml_config(cfg: Config, sites: int, rounds: int, workdir: Path) -> dict:
    return {"vertical": "digits", "preset": "", "algorithm": "fomaml", "seed": cfg.seed, "experiment": "site-scale",
            "fed.rounds": rounds, "fed.clients_per_round": cfg.clients, "inner.steps": 5, "inner.lr": 0.05,
            "server.optimizer": "adam", "server.lr": 1e-3, "flower.finish": False, "flower.eval_roles": ",",
            "flower.min_available_clients": cfg.clients, "flower.round_timeout": 600.0,
            "flower.connect_timeout": 600.0, "data.train_sites": sites,
            "flower.event_log": str(workdir / "events.jsonl")}


# ------------------------------------------------------------------------------------------------ children
def child_inprocess(cfg: Config) -> dict:
    import mlflow  # noqa: F401  (``fml run`` has it loaded: count it)
    import torch

    from engine_overhead import timed_rounds
    from pipelines.federate_node import vertical_spec
    from pipelines.federate_server import resolve_run

    torch.set_num_threads(1)
    run = resolve_run(fml_config(cfg, cfg.child_sites, cfg.warmup + cfg.rounds, Path(tempfile.gettempdir())))
    rss_libraries = peak_rss_mb()
    start = time.perf_counter()
    problem = vertical_spec("digits").build(run.extra.data, run.seed)
    prep_s = time.perf_counter() - start
    times = timed_rounds(problem, run, cfg.warmup + cfg.rounds)
    return {"prepare_s": prep_s, "ms_per_round": statistics.median(times[cfg.warmup:]),
            "rss_libraries_mb": rss_libraries, "peak_rss_mb": peak_rss_mb()}


def child_evaluate(cfg: Config) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="fml-site-scale-"))
    env = {**os.environ, "FML_HOME": str(workdir / "home"), "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "pipelines.cli", "evaluate", "digits", "--preset", "quick", "--fed.rounds",
           str(cfg.evaluate_rounds), "--algorithms", "fomaml", "--data.train-sites", str(cfg.child_sites),
           "--output-dir", str(workdir / "out")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "wall_s": wall}
    return {"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def tree_rss_mb() -> float:
    """Summed RSS of this process and all its descendants (Ray's processes included), from ``/proc``."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total / 2**20


def child_simulation(cfg: Config) -> dict:
    from pipelines.federate_server import simulate

    workdir = Path(tempfile.mkdtemp(prefix="fml-site-scale-sim-"))
    os.environ["FML_HOME"] = str(workdir / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_mb())
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    config = fml_config(cfg, cfg.child_sites, cfg.simulation_rounds, workdir)
    from data_adapters.digits import DigitsData

    nodes = cfg.child_sites + DigitsData().validation_sites
    start = time.perf_counter()
    result = simulate(config, num_nodes=nodes, finish=False)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    ms = [r.metrics["fed/round_ms"] for r in result.rounds]
    return {"nodes": nodes, "wall_s": wall, "ms_per_round": statistics.median(ms[1:] or ms),
            "peak_tree_rss_mb": peak[0]}


CHILDREN = {"inprocess": child_inprocess, "evaluate": child_evaluate, "simulation": child_simulation}


# ------------------------------------------------------------------------------------------------ parent
def measure(kind: str, cfg: Config, sites: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--child-sites", str(sites), "--clients", str(cfg.clients),
           "--rounds", str(cfg.rounds), "--warmup", str(cfg.warmup), "--evaluate-rounds", str(cfg.evaluate_rounds),
           "--simulation-rounds", str(cfg.simulation_rounds), "--seed", str(cfg.seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    print(f"[site_scale] {kind} at {sites:,} sites ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        subprocess.run(["pkill", "-f", "raylet|gcs_server|ray::"], check=False)
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def main(cfg: Config) -> dict:
    rows = []
    simulation_failed = cfg.skip_simulation
    for n in cfg.sites:
        row: dict = {"train_sites": n, "inprocess": measure("inprocess", cfg, n, 3600)}
        if cfg.evaluate_rounds > 0:
            row["evaluate"] = measure("evaluate", cfg, n, 3600)
        if not simulation_failed:
            row["flower_simulation"] = measure("simulation", cfg, n, cfg.simulation_timeout)
            simulation_failed = "error" in row["flower_simulation"]
        rows.append(row)
    base = rows[0]["inprocess"].get("ms_per_round")
    print(f"\nSite scale on R1 (FO-MAML, {cfg.clients} clients per round; fresh process per figure)")
    print(f"{'sites':>8} | {'prepare s':>9} {'ms/round':>9} {'x first':>8} {'peak MB':>8} | "
          f"{'evaluate s':>10} {'peak MB':>8} | {'Flower sim ms/round':>19} {'tree MB':>8}")
    for row in rows:
        ip, ev, sim = row["inprocess"], row.get("evaluate", {}), row.get("flower_simulation", {})
        if base and "ms_per_round" in ip:
            ip["vs_first"] = ip["ms_per_round"] / base
        sim_cells = (f"{sim['ms_per_round']:>19.1f} {sim['peak_tree_rss_mb']:>8.0f}" if "ms_per_round" in sim
                     else f"{sim.get('error', 'skipped')[:28]:>28}")
        print(f"{row['train_sites']:>8,} | {ip.get('prepare_s', float('nan')):>9.1f} "
              f"{ip.get('ms_per_round', float('nan')):>9.1f} {ip.get('vs_first', float('nan')):>8.2f} "
              f"{ip.get('peak_rss_mb', float('nan')):>8.0f} | {ev.get('wall_s', float('nan')):>10.1f} "
              f"{ev.get('peak_rss_mb', float('nan')):>8.0f} | {sim_cells}")
    largest = rows[-1]
    targets = {"sites": largest["train_sites"], "peak_rss_mb_max": 2048, "round_time_ratio_max": 1.2,
               "peak_rss_mb": max(largest["inprocess"].get("peak_rss_mb", float("inf")),
                                  largest.get("evaluate", {}).get("peak_rss_mb", 0.0)),
               "round_time_ratio": largest["inprocess"].get("vs_first")}
    targets["met"] = bool(targets["peak_rss_mb"] <= 2048 and (targets["round_time_ratio"] or 9) <= 1.2)
    print(f"target at {targets['sites']:,} sites: peak {targets['peak_rss_mb']:.0f} MB (<= 2048), round time "
          f"{targets['round_time_ratio'] or float('nan'):.2f}x the {rows[0]['train_sites']:,}-site run (<= 1.2): "
          f"{'met' if targets['met'] else 'NOT met'}")
    result = {"workload": "R1", "benchmark": "site_scale", "algorithm": "fomaml", "clients": cfg.clients,
              "load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count(), "targets": targets, "results": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    config = tyro.cli(Config)
    if config.child:
        print(json.dumps(CHILDREN[config.child](config)))
    else:
        main(config)
