"""GPU check: the same federated rounds on the CPU and on a CUDA GPU in one run, with CPU/GPU time ratios and a
check that the GPU computes the CPU's numbers (issue 16, devices).

Workloads (a round is exactly ``MetaLearner.run_round``: sample clients, draw their episodes on the CPU and move
them to the device, one ``vmap`` over the clients, aggregate, step the server Adam at lr 1e-3):

- ``R1`` (``../shared/BENCHMARKS.md``): digits 5-way, 5 shots + 15 query per class, MLP 64-128-128-5, 5 inner SGD
  steps at lr 0.05, FO-MAML and MAML, at 50 and 500 clients per round (as many training sites as clients);
- ``imaging``: timm ResNet-18 with GroupNorm (the imaging vertical's ``resnet18`` factory, 11.2M parameters),
  synthetic 1-channel images at 64 and 128 px, 2-way, 5 shots + 5 query per class, FO-MAML with 1 inner step,
  8 clients per round. Synthetic pixels: only the speed is measured.

Times are medians of ``--rounds`` (imaging: ``--imaging-rounds``) rounds after ``--warmup`` untimed ones
(``torch.cuda.synchronize`` around each GPU round), with the vmap call replayed as a traced graph from round 0
(``--trace-after 1``; ``0``: eager). ``max_abs_diff`` is the largest difference between the CPU's and the GPU's
aggregated direction of round 0 from the same initialization, ``max_rel_diff`` the same relative to each tensor's
largest CPU entry (float32 sums in another order; cuDNN's TF32 convolutions, PyTorch's default on Ampere and later,
move the imaging rows by up to 10% on an H200: ``--no-tf32`` turns them off, core/scale.md). Without CUDA the CPU
side runs and the GPU side is reported as skipped. Prints a table, then as its LAST line one JSON object
(``../shared/BENCHMARKS.md``).

    python benchmarks/gpu_check.py                          # the full check (an H200 machine: about 2 minutes)
    python benchmarks/gpu_check.py --r1-clients 10 20 --imaging-px 32 --imaging-clients 2 --rounds 2 --imaging-rounds 1
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from core.algorithms import InnerConfig  # noqa: E402
from core.config import FederatedConfig, ServerConfig  # noqa: E402
from core.devices import DeviceError, describe_device, resolve_device, to_device  # noqa: E402
from core.learner import MetaLearner  # noqa: E402
from core.metrics import accuracy_metrics  # noqa: E402
from core.problem import SupervisedProblem  # noqa: E402
from core.tasks import EpisodeSpec, Federation, Site  # noqa: E402
from core.types import Params  # noqa: E402
from data_adapters.digits import DigitsData, load_digit_arrays, make_task_site  # noqa: E402
from verticals.digits import problem_for  # noqa: E402
from verticals.medical_imaging.model import MODELS, ModelSpec  # noqa: E402


@dataclass
class Config:
    """CPU vs GPU rounds."""

    r1_clients: list[int] = field(default_factory=lambda: [50, 500])
    """R1 clients per round (one row each, per algorithm)."""
    r1_algorithms: list[str] = field(default_factory=lambda: ["fomaml", "maml"])
    """R1 algorithms (first and second order)."""
    imaging_px: list[int] = field(default_factory=lambda: [64, 128])
    """Imaging image sizes (one row each)."""
    imaging_clients: int = 8
    """Imaging clients per round."""
    imaging_shots: int = 5
    """Imaging support images per class (the query has as many)."""
    rounds: int = 5
    """Timed R1 rounds per row (the median is reported)."""
    imaging_rounds: int = 3
    """Timed imaging rounds per row (a CPU round of ResNet-18 at 128 px takes seconds)."""
    warmup: int = 1
    """Untimed rounds first (vmap tracing, CUDA kernels and allocator warm-up)."""
    trace_after: int = 1
    """``fed.trace_after`` of the rounds (core/replay.py): 1 traces the vmap call in round 0, so the timed rounds
    replay the graph (what a long run does after its first rounds); 0 times the eager call."""
    threads: int = 0
    """``torch.set_num_threads`` for the CPU side (0 = every core of the machine)."""
    tf32: bool = True
    """cuDNN convolutions in TF32 on the GPU (PyTorch's default); ``--no-tf32`` computes them in float32 like the
    CPU."""
    gpu: str = "cuda"
    """The GPU side's ``--device``; without one it is skipped."""
    cpu: bool = True
    """Run the CPU side (``--no-cpu``: GPU only)."""
    seed: int = 0
    """Seeds the sites, the initialization and the round draws."""


class TimedLearner(MetaLearner):
    """The production ``MetaLearner`` with a plain server optimizer, so ``run_round`` runs without a Trainer."""

    def optimizers(self, use_pl_optimizer: bool = True):  # noqa: D102
        if not hasattr(self, "_server_opt"):
            self._server_opt = self.configure_optimizers()
        return self._server_opt


def r1_problem(sites: int, seed: int) -> SupervisedProblem:
    """R1 with ``sites`` training sites (each its own 5-way task, as ``benchmarks/r1_workload.py`` builds 100)."""
    x, y = load_digit_arrays()
    built = [make_task_site(f"train-{i:04d}", x, y, 5, seed * 1_000_003 + i) for i in range(sites)]
    federation = Federation({s.site_id: s for s in built}, {"train": [s.site_id for s in built]})
    return problem_for(federation, DigitsData(ways=5, train_sites=sites, validation_sites=0, test_sites=0))


def imaging_problem(px: int, sites: int, per_class: int, shots: int, seed: int) -> SupervisedProblem:
    """Synthetic 2-class 1-channel ``px`` x ``px`` images (class 1 brighter), timm ResNet-18 with GroupNorm."""
    gen = torch.Generator().manual_seed(seed)
    built = []
    for i in range(sites):
        y = torch.arange(2).repeat_interleave(per_class)
        x = torch.randn(2 * per_class, 1, px, px, generator=gen) + 0.5 * y[:, None, None, None]
        built.append(Site(f"clinic-{i:03d}", x, y))
    federation = Federation({s.site_id: s for s in built}, {"train": [s.site_id for s in built]})
    spec = ModelSpec("resnet18", in_channels=1, num_classes=2, image_size=px)
    return SupervisedProblem(federation=federation, model_factory=lambda: MODELS.get("resnet18")(spec),
                             criterion=torch.nn.functional.cross_entropy, metrics=accuracy_metrics, headline="accuracy",
                             train_spec=EpisodeSpec(shots=shots, query=shots, by="class", num_classes=2), num_classes=2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(problem: SupervisedProblem, algorithm: str, inner: InnerConfig, clients: int, device: torch.device,
                rounds: int, cfg: Config) -> tuple[float, Params]:
    """Median milliseconds of ``rounds`` rounds after ``cfg.warmup`` on ``device``, and round 0's aggregated
    direction (on the CPU)."""
    warmup = cfg.warmup
    fed = FederatedConfig(rounds=warmup + rounds, clients_per_round=clients, trace_after=cfg.trace_after)
    learner = TimedLearner(problem, algorithm, inner, fed, ServerConfig("adam", 1e-3), cfg.seed).to(device)
    _, _, direction = learner.client_round(0)
    first = to_device(direction, "cpu")
    times = []
    for r in range(warmup + rounds):
        sync(device)
        start = time.perf_counter()
        learner.run_round(r)
        sync(device)
        if r >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    del learner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(times), first


def max_abs_diff(a: Params, b: Params) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def max_rel_diff(a: Params, b: Params) -> float:
    """The largest difference of a tensor relative to that tensor's largest CPU entry."""
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a)


def compare(row: dict, problem: SupervisedProblem, algorithm: str, inner: InnerConfig, clients: int,
            cpu: Optional[torch.device], gpu: Optional[torch.device], rounds: int, cfg: Config) -> dict:
    """Fill ``row`` with the CPU and GPU times of one workload, their ratio and round 0's difference."""
    firsts = {}
    for side, device in (("cpu", cpu), ("gpu", gpu)):
        if device is None:
            row[f"{side}_ms"] = None
            continue
        ms, firsts[side] = time_rounds(problem, algorithm, inner, clients, device, rounds, cfg)
        row[f"{side}_ms"] = round(ms, 2)
    both = row["cpu_ms"] is not None and row["gpu_ms"] is not None
    row["cpu_over_gpu"] = round(row["cpu_ms"] / row["gpu_ms"], 2) if both else None
    row["max_abs_diff"] = float(f"{max_abs_diff(firsts['cpu'], firsts['gpu']):.3g}") if both else None
    row["max_rel_diff"] = float(f"{max_rel_diff(firsts['cpu'], firsts['gpu']):.3g}") if both else None
    print(f"| {row['workload']} | {row.get('px', '-')} | {algorithm} | {clients} | {row['cpu_ms']} | {row['gpu_ms']} | "
          f"{row['cpu_over_gpu']} | {row['max_abs_diff']} | {row['max_rel_diff']} |", flush=True)
    return row


def main(cfg: Config) -> dict:
    if min(cfg.rounds, cfg.imaging_rounds, cfg.imaging_clients, cfg.imaging_shots) < 1 or cfg.warmup < 0:
        raise ValueError("--rounds, --imaging-rounds, --imaging-clients and --imaging-shots must be >= 1, --warmup >= 0")
    # 1. the two sides: the CPU with every core (or --threads), the GPU if there is one
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    cpu = torch.device("cpu") if cfg.cpu else None
    gpu, skipped = None, None
    try:
        gpu = resolve_device(cfg.gpu)
        if gpu.type != "cuda":
            gpu, skipped = None, f"--gpu {cfg.gpu} resolved to {gpu}, not a GPU"
    except DeviceError as err:
        skipped = str(err)
    print(f"GPU check: torch {torch.__version__}, CPU side {torch.get_num_threads()} threads on {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f}), fed.trace_after {cfg.trace_after}, GPU side "
          f"{describe_device(gpu) if gpu is not None else 'SKIPPED: ' + str(skipped)}, TF32 convolutions {'on' if cfg.tf32 else 'off'}")
    print("| workload | px | algorithm | clients | CPU ms/round | GPU ms/round | CPU/GPU | max abs diff, round 0 | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    # 2. R1 at each client count (as many sites as the largest count)
    if cfg.r1_clients:
        r1 = r1_problem(max(cfg.r1_clients), cfg.seed)
        for clients in cfg.r1_clients:
            for algorithm in cfg.r1_algorithms:
                results.append(compare({"workload": "R1", "algorithm": algorithm, "clients": clients}, r1, algorithm,
                                       InnerConfig(steps=5, lr=0.05), clients, cpu, gpu, cfg.rounds, cfg))
    # 3. imaging with timm ResNet-18 at each image size
    for px in cfg.imaging_px:
        problem = imaging_problem(px, cfg.imaging_clients, 2 * cfg.imaging_shots + 2, cfg.imaging_shots, cfg.seed)
        results.append(compare({"workload": "imaging-resnet18", "px": px, "algorithm": "fomaml",
                                "clients": cfg.imaging_clients}, problem, "fomaml", InnerConfig(steps=1, lr=0.01),
                               cfg.imaging_clients, cpu, gpu, cfg.imaging_rounds, cfg))
    if gpu is None:
        print(f"GPU side skipped: {skipped}")
    out = {"benchmark": "gpu_check", "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
           "gpu": describe_device(gpu) if gpu is not None else None, "gpu_skipped": skipped,
           "rounds": cfg.rounds, "imaging_rounds": cfg.imaging_rounds, "warmup": cfg.warmup,
           "trace_after": cfg.trace_after, "tf32": cfg.tf32, "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
