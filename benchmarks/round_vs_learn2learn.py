"""The R1 round against learn2learn: our ``MetaLearner.run_round`` beside learn2learn 0.2.0's ``MAML``
clone/adapt loop on the same round, first and second order, 10 and 50 clients, in ONE run.

Every side runs exactly the same round (workload R1 of ``../shared/BENCHMARKS.md``): the same sampled
clients and the same episodes (5-way 5-shot + 15 query per class, drawn by the problem's own sampler from
each site's seeded stream), the same initial MLP 64-128-128-5, 5 inner SGD steps at lr 0.05, and the
meta-gradients averaged over clients and applied by Adam lr 1e-3 on the server model. learn2learn's side
is its standard loop (``examples/vision/maml_omniglot.py``): per client ``learner = maml.clone()``, five
``learner.adapt(support_loss)``, ``query_loss.backward()``; then the gradients divided by the number of
clients and ``opt.step()``. Ours is timed twice: the eager ``vmap`` call (``fed.trace_after=0``) and its
traced replay (core/replay.py; the default from a run's 10th round, here from the first).

The sides must compute the same round, else the run fails: round 0's averaged meta-gradients must agree to
1e-4 of their largest entry (rounding alone: about 1e-7), the parameters after the timed rounds to 5e-4,
half an Adam step. (Not bitwise: per-client and batched matmuls round differently, and Adam turns that into
a fraction of its lr 1e-3 where a gradient coordinate is near zero; measured 1e-7 to 4e-5.)

Rounds of the sides alternate (learn2learn's round r, then ours), so load from other processes on a shared
machine hits all alike; the reported figure is the median of ``--rounds`` after ``--warmup``. The headline
ratio (``ratio_fo``, ``ratio_so``) is learn2learn's time over our default (replayed) round.

learn2learn 0.2.0 is not a dependency and does not build on Python >= 3.11 (its Cython data modules),
but its MAML is pure Python (``learn2learn/algorithms/maml.py``, ``base_learner.py``,
``learn2learn/utils/__init__.py``). To reproduce, unpack the source distribution anywhere and point the
benchmark at it; it loads only those modules (an installed learn2learn is used as it is):

    pip download learn2learn==0.2.0 --no-deps --no-binary :all: -d /tmp
    tar xzf /tmp/learn2learn-0.2.0.tar.gz -C /tmp
    python benchmarks/round_vs_learn2learn.py --learn2learn-source /tmp/learn2learn-0.2.0   # ~1 min idle

Without learn2learn the benchmark times our round alone and says why learn2learn was skipped. The LAST
line is one JSON object: ``{"workload": "R1", "peer": .., "skipped": .., "parity_ok": .., "results":
[{"clients": 10, "l2l_fo_ms": .., "vmap_fo_ms": .., "replay_fo_ms": .., "ratio_fo": .., "ratio_fo_vmap": ..,
"grad_mismatch_fo": .., "param_diff_fo": .., (the same with so), "target": 3.0, "peak_rss_mb": ..},
{"clients": 50, ..}]}``.
"""
from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import tyro
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # opacus installs a top-level ``benchmarks`` package

from core.algorithms import InnerConfig  # noqa: E402
from core.config import FederatedConfig, ServerConfig  # noqa: E402
from core.problem import SupervisedProblem  # noqa: E402
from core.sampling import sample_clients  # noqa: E402
from core.seeds import round_generator, site_generator  # noqa: E402
from r1_workload import r1_problem  # noqa: E402
from round_throughput import TimedLearner, TimingConfig, peak_rss_mb  # noqa: E402

INNER = InnerConfig(steps=5, lr=0.05)
SERVER_LR = 1e-3
TARGETS = {10: 3.0, 50: 5.0}  # issue 16: >= 3x learn2learn at 10 clients, >= 5x at 50, both orders
GRAD_TOL = 1e-4  # round 0's meta-gradients, relative to their largest entry (rounding: about 1e-7)
PARAM_TOL = 5e-4  # parameters after the timed rounds: half an Adam step (rounding noise: up to about 4e-5)
ORDERS = {"fo": "fomaml", "so": "maml"}
OURS = {"vmap": 0, "replay": 1}  # side -> fed.trace_after: the eager vmap call, and its traced replay


@dataclass
class Config(TimingConfig):
    """R1 round: ours vs learn2learn (``--rounds``: per side)."""

    learn2learn_source: Optional[Path] = None
    """An unpacked learn2learn 0.2.0 source distribution (the folder holding ``learn2learn/``); used when
    learn2learn is not importable as installed. See the module docstring for the two commands."""


# 1. learn2learn's pure-Python MAML, without the package's Cython parts

def load_learn2learn_maml(source: Optional[Path]) -> tuple[Optional[type], str]:
    """``(learn2learn.algorithms.MAML, where it came from)``, or ``(None, why not)``.

    An installed learn2learn is used as it is. Otherwise ``source`` (an unpacked sdist) provides the three
    pure-Python modules MAML needs; the packages ``learn2learn`` and ``learn2learn.algorithms`` are registered
    as empty namespaces so their ``__init__`` (which imports the unbuilt Cython ``learn2learn.data``) never runs.
    """
    try:
        from learn2learn.algorithms import MAML  # type: ignore[import-not-found]

        return MAML, "installed learn2learn " + getattr(sys.modules["learn2learn"], "__version__", "?")
    except Exception as exc:  # not installed, or installed but its Cython parts fail to import
        installed_error = f"{type(exc).__name__}: {exc}"
    for name in [m for m in sys.modules if m == "learn2learn" or m.startswith("learn2learn.")]:
        del sys.modules[name]  # a half-imported install must not shadow the source tree
    if source is None:
        return None, (f"learn2learn is not importable ({installed_error}); unpack its sdist and pass "
                      "--learn2learn-source (see this script's docstring)")
    package = Path(source).expanduser().resolve() / "learn2learn"
    if not (package / "algorithms" / "maml.py").is_file():
        return None, f"--learn2learn-source {source}: no learn2learn/algorithms/maml.py there"
    for name, folder in (("learn2learn", package), ("learn2learn.algorithms", package / "algorithms")):
        namespace = types.ModuleType(name)
        namespace.__path__ = [str(folder)]
        sys.modules[name] = namespace
    maml = importlib.import_module("learn2learn.algorithms.maml")
    version = (package / "_version.py").read_text().split("=")[-1].strip().strip("'\"")
    return maml.MAML, f"learn2learn {version} (pure-Python MAML from {package.parent})"


# 2. one round of each side

def round_clients(problem: SupervisedProblem, clients: int, seed: int, round_index: int) -> list[str]:
    """The clients ``MetaLearner.run_round`` samples (uniform sampler, no dropout)."""
    ids = problem.train_site_ids()
    return sample_clients(ids, [problem.site_size(s) for s in ids], clients, round_generator(seed, round_index))


class Learn2LearnRound:
    """learn2learn's standard MAML loop over the same clients and episodes as our round ``r``."""

    def __init__(self, maml_cls: type, problem: SupervisedProblem, start: nn.Module, first_order: bool,
                 clients: int, seed: int) -> None:
        model = problem.make_model()
        model.load_state_dict(start.state_dict())
        self.maml = maml_cls(model, lr=INNER.lr, first_order=first_order)
        self.opt = torch.optim.Adam(self.maml.parameters(), lr=SERVER_LR)
        self.problem, self.clients, self.seed = problem, clients, seed

    def __call__(self, round_index: int) -> None:
        self.meta_gradient(round_index)
        self.opt.step()

    def meta_gradient(self, round_index: int) -> dict[str, torch.Tensor]:
        """Round ``round_index``'s averaged meta-gradient, left in ``.grad`` for the server step."""
        criterion = self.problem.criterion
        ids = round_clients(self.problem, self.clients, self.seed, round_index)
        self.opt.zero_grad()
        for sid in ids:
            episode = self.problem.train_episode(sid, {}, site_generator(self.seed, round_index, sid))
            (xs, ys), (xq, yq) = episode.support, episode.query
            learner = self.maml.clone()
            for _ in range(INNER.steps):
                learner.adapt(criterion(learner(xs), ys))
            criterion(learner(xq), yq).backward()
        for p in self.maml.parameters():
            p.grad.mul_(1.0 / len(ids))
        return {k: p.grad.detach().clone() for k, p in self.maml.module.named_parameters()}

    def params(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.maml.module.named_parameters()}


def our_learner(problem: SupervisedProblem, algorithm: str, clients: int, trace_after: int,
                cfg: Config) -> TimedLearner:
    fed = FederatedConfig(rounds=cfg.warmup + cfg.rounds, clients_per_round=clients, vectorize=True,
                          trace_after=trace_after)
    return TimedLearner(problem, algorithm, INNER, fed, ServerConfig("adam", SERVER_LR), cfg.seed)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(step: Callable[[int], Any], round_index: int, clock: Callable[[], float]) -> float:
    start = clock()
    step(round_index)
    return (clock() - start) * 1e3


def cell(value: Optional[float], suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def sci(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{value:.1e}"


def gradient_mismatch(problem: SupervisedProblem, maml_cls: type, order: str, clients: int, cfg: Config) -> float:
    """How far learn2learn's averaged meta-gradient of round 0 is from our aggregated direction: the largest
    entry difference over the largest entry (rounding alone: about 1e-7)."""
    ours = our_learner(problem, ORDERS[order], clients, 0, cfg)
    direction = ours.client_round(0)[2]
    theirs = Learn2LearnRound(maml_cls, problem, ours.model, order == "fo", clients, cfg.seed).meta_gradient(0)
    scale = max(float(g.abs().max()) for g in theirs.values())
    return max(float((direction[k] - theirs[k]).abs().max()) for k in theirs) / scale


def compare(problem: SupervisedProblem, maml_cls: Optional[type], order: str, clients: int, cfg: Config) -> dict:
    """Median ms per round of every side (rounds alternating) and the largest parameter difference between
    learn2learn's model and each of ours afterwards."""
    sides: dict[str, Any] = {side: our_learner(problem, ORDERS[order], clients, after, cfg)
                             for side, after in OURS.items()}
    if maml_cls is not None:
        sides["l2l"] = Learn2LearnRound(maml_cls, problem, sides["replay"].model, order == "fo", clients, cfg.seed)
    times: dict[str, list[float]] = {side: [] for side in sides}
    for r in range(cfg.warmup + cfg.rounds):
        for side, runner in sides.items():
            step = runner if side == "l2l" else runner.run_round
            elapsed = timed(step, r, CLOCKS[cfg.clock])
            if r >= cfg.warmup:
                times[side].append(elapsed)
    out = {f"{side}_ms": statistics.median(ms) for side, ms in times.items()}
    if maml_cls is not None:
        out["grad_mismatch"] = gradient_mismatch(problem, maml_cls, order, clients, cfg)
        theirs = sides["l2l"].params()
        out["param_diff"] = max(float((learner.meta_params()[k] - theirs[k]).abs().max())
                                for side, learner in sides.items() if side != "l2l" for k in theirs)
    return out


# 3. the table and the JSON line

def main(cfg: Config) -> dict:
    if cfg.clock not in CLOCKS:
        raise ValueError(f"--clock must be one of {sorted(CLOCKS)}, got {cfg.clock!r}")
    if cfg.rounds < 1 or cfg.warmup < 0:
        raise ValueError(f"--rounds must be >= 1 and --warmup >= 0, got {cfg.rounds} and {cfg.warmup}")
    torch.set_num_threads(cfg.threads)
    maml_cls, origin = load_learn2learn_maml(cfg.learn2learn_source)
    if maml_cls is None:
        print(f"SKIPPING learn2learn: {origin}")
    problem = r1_problem(cfg.seed, test_tasks=0)

    results = []
    for clients in cfg.clients:
        row: dict = {"clients": clients}
        for order in ORDERS:
            got = compare(problem, maml_cls, order, clients, cfg)
            theirs = got.get("l2l_ms")
            row[f"l2l_{order}_ms"] = None if theirs is None else round(theirs, 2)
            for side in OURS:
                row[f"{side}_{order}_ms"] = round(got[f"{side}_ms"], 2)
            row[f"ratio_{order}"] = None if theirs is None else round(theirs / got["replay_ms"], 2)
            row[f"ratio_{order}_vmap"] = None if theirs is None else round(theirs / got["vmap_ms"], 2)
            row[f"grad_mismatch_{order}"] = got.get("grad_mismatch")
            row[f"param_diff_{order}"] = got.get("param_diff")
        row["target"] = TARGETS.get(clients)
        row["peak_rss_mb"] = round(peak_rss_mb(), 1)
        results.append(row)

    print(f"R1 round, ours (MetaLearner.run_round: eager vmap / its traced replay, the default from round "
          f"fed.trace_after on) vs {origin}: ms per round ({cfg.clock} clock), median of {cfg.rounds} after "
          f"{cfg.warmup} warm-up, rounds alternating; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| clients | order | learn2learn | ours, vmap | ours, replayed | ratio (replayed) | ratio (vmap) "
          "| target (>=) | gradient mismatch, round 0 | max param diff, last round |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for order, label in (("fo", "1st"), ("so", "2nd")):
            print(f"| {r['clients']} | {label} | {cell(r[f'l2l_{order}_ms'])} | {r[f'vmap_{order}_ms']} | "
                  f"{r[f'replay_{order}_ms']} | {cell(r[f'ratio_{order}'], 'x')} | "
                  f"{cell(r[f'ratio_{order}_vmap'], 'x')} | {cell(r['target'], 'x')} | "
                  f"{cell(sci(r[f'grad_mismatch_{order}']))} | {cell(sci(r[f'param_diff_{order}']))} |")
    mismatched = [(r["clients"], o) for r in results for o in ORDERS if r[f"grad_mismatch_{o}"] is not None
                  and (r[f"grad_mismatch_{o}"] > GRAD_TOL or r[f"param_diff_{o}"] > PARAM_TOL)]
    if mismatched:
        print(f"FAILED: learn2learn's round differs from ours (gradients beyond {GRAD_TOL} relative, or parameters "
              f"beyond {PARAM_TOL}) at {mismatched}: the sides did not compute the same round, so the ratios mean "
              "nothing")
    out = {"workload": "R1", "clock": cfg.clock, "threads": cfg.threads,
           "peer": origin if maml_cls is not None else None, "skipped": None if maml_cls is not None else origin,
           "parity_ok": not mismatched, "results": results}
    print(json.dumps(out))
    if mismatched:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main(tyro.cli(Config))
