"""The skeleton shared by the vertical held-out benchmarks: their common flags, a throwaway MLflow store,
and ``fml run <vertical>`` end to end with the benchmark's overrides.

core/, pipelines/ and verticals/ are imported inside the functions, never at module level: the scripts
must point MLflow at the temporary store (environment variables) BEFORE those modules read it.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar

import pandas as pd

if __package__:  # imported as benchmarks.heldout_common
    from .provenance import machine
else:  # a script's own folder on sys.path
    from provenance import machine

if TYPE_CHECKING:
    from core.vertical import VerticalSpec
    from pipelines.onboard import OnboardResult
    from pipelines.run import RunResult


FlagsT = TypeVar("FlagsT")


def parse_flags(flags_class: type[FlagsT], argv: Optional[Sequence[str]] = None) -> FlagsT:
    """The benchmark's flags (tyro), refusing a repeated ``--set``: tyro keeps only the last one, so
    ``--set A=1 --set B=2`` would silently run without ``A=1``."""
    import tyro

    args = list(sys.argv[1:] if argv is None else argv)
    if sum(a == "--set" or a.startswith("--set=") for a in args) > 1:
        raise SystemExit("--set is given more than once and only the last would apply: put every override "
                         "after one --set, e.g. --set data.simulate=false eval.checkpoint_metric=rmse_all")
    return tyro.cli(flags_class, args=args)


@dataclass
class HeldoutFlags:
    """Flags of every held-out benchmark (each script sets its own defaults and adds its onboarding flags)."""

    preset: str = "quick"
    """Preset of verticals/<vertical>/presets (quick or full)."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """Training seeds, one whole run each (roles, init, sampling, draws); tables pool seeds x draws. The
    registry's ``champion`` is onboarded, with the last seed's support draw: the first seed's model, unless a later
    seed's run, evaluated on the same held-out sites, scored better (runs whose seeds draw other held-out sites
    register as challengers)."""
    store: Optional[str] = None
    """MLflow tracking URI (default: a temporary SQLite store, deleted afterwards)."""
    output_dir: str = "fml-output/bench"
    """Tables, plots and checkpoints of the run."""
    threads: int = 1
    """torch threads (the models are small: one thread is fastest, and robust on a shared machine)."""
    json_out: Optional[str] = None
    """Also write the closing JSON line to this file (``benchmarks/where_fml_helps.py`` reads such files)."""
    set: list[str] = dataclasses.field(default_factory=list)
    """Run options over the preset, as dotted KEY=VALUE (e.g. data.site_statistics=true data.offset_std=1.5);
    recorded in the JSON line."""


@dataclass
class ShortenableFlags(HeldoutFlags):
    """Flags of the benchmarks whose runs can be shortened."""

    rounds: Optional[int] = None
    """Override the preset's federated rounds."""
    draws: Optional[int] = None
    """Override the preset's support draws per (site, shots)."""


def temporary_store(name: str, store: Optional[str]) -> tempfile.TemporaryDirectory:
    """A temporary folder holding MLflow's SQLite store (unless ``store`` names one) and, unless set,
    ``FML_HOME``: the benchmark must never move the ``champion`` alias of a real registry."""
    tmp = tempfile.TemporaryDirectory(prefix=f"fml-bench-{name}-")
    os.environ["MLFLOW_TRACKING_URI"] = store or f"sqlite:///{Path(tmp.name) / 'mlflow.db'}"
    os.environ.setdefault("FML_HOME", tmp.name)
    return tmp


#: A pooled draw number is ``seed * DRAWS_PER_SEED + draw``: pairing on (site, shots, steps, draw) then pairs
#: the same draw of the same seed, and intervals run over seeds x draws.
DRAWS_PER_SEED = 10_000


@dataclass
class HeldoutRun:
    """Finished ``fml run``s, one per seed: what the benchmark onboards from (the last) and prints (all)."""

    spec: VerticalSpec
    run_cfg: Any
    """The last run's configuration (preset plus the benchmark's overrides)."""
    result: RunResult
    """The last seed's run."""
    rows: pd.DataFrame
    """Every run's ``evaluation_rows.parquet`` (site, method, shots, steps, draw, metric, value), with a
    ``seed`` column and draws renumbered per seed (``DRAWS_PER_SEED``)."""
    seconds: float
    """Wall time of the last pipeline."""
    best_by_seed: dict[int, str] = dataclasses.field(default_factory=dict)
    """The default each seed's run registered."""
    seconds_by_seed: dict[int, float] = dataclasses.field(default_factory=dict)
    """Wall time of each seed's pipeline (the whole benchmark is their sum plus onboarding)."""
    fallback_by_seed: dict[int, dict] = dataclasses.field(default_factory=dict)
    """Each seed's defaults for a support that cannot be split (its run's ``fallback_defaults.json``)."""
    model_uri_by_seed: dict[int, str] = dataclasses.field(default_factory=dict)
    """Each seed's logged meta-initialization bundle (its run's ``meta_init_uri`` tag): what ``fml onboard
    --model`` takes."""

    @property
    def train_seconds(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.result.train_seconds.items()}

    @property
    def chosen(self) -> pd.DataFrame:
        """The adaptation settings chosen on the validation sites."""
        selection = self.result.selection
        return selection[selection["chosen"]] if not selection.empty else selection


def run_heldout_pipeline(vertical: str, flags: HeldoutFlags) -> HeldoutRun:
    """``fml run <vertical>`` once per seed of ``flags.seeds`` with the benchmark's output folder, torch
    threads and experiment (and, for ``ShortenableFlags``, its rounds and draws overrides), timed."""
    import torch

    import verticals
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.run import run_pipeline

    from pipelines.process_setup import configure_process

    configure_process()  # the fml command's named warnings and loggers: a benchmark's console reads like a run's
    verticals.load_all()
    spec = VERTICALS.get(vertical)
    torch.set_num_threads(flags.threads)
    import mlflow

    parts, best, seconds_by_seed, fallback, uris = [], {}, {}, {}, {}
    for seed in flags.seeds:
        run_cfg = with_overrides(load_preset(spec, flags.preset), flags.set)
        run_cfg.seed, run_cfg.output_dir = seed, str(Path(flags.output_dir) / f"seed{seed}")
        if isinstance(flags, ShortenableFlags):  # the others keep the preset's run length
            if flags.rounds is not None:
                run_cfg.fed.rounds = flags.rounds
            if flags.draws is not None:
                run_cfg.eval.draws = flags.draws
        run_cfg.tracking.experiment = f"fml-{vertical}-benchmark"
        start = time.perf_counter()
        result = run_pipeline(spec, run_cfg, progress=False)
        seconds = time.perf_counter() - start
        rows = pd.read_parquet(result.output_dir / "evaluation_rows.parquet")
        parts.append(rows.assign(seed=seed, draw=rows["draw"] + seed * DRAWS_PER_SEED))
        best[seed], seconds_by_seed[seed] = result.best_algorithm, round(seconds, 2)
        fallback[seed] = json.loads((result.output_dir / "fallback_defaults.json").read_text())
        uris[seed] = mlflow.MlflowClient().get_run(result.run_id).data.tags["meta_init_uri"]
    return HeldoutRun(spec, run_cfg, result, pd.concat(parts, ignore_index=True), seconds, best, seconds_by_seed,
                      fallback, uris)


def with_overrides(run_cfg: Any, dotlist: list[str]) -> Any:
    """``run_cfg`` with dotted ``KEY=VALUE`` overrides (typed by the run config's schema)."""
    if not dotlist:
        return run_cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(run_cfg), OmegaConf.from_dotlist(list(dotlist))))


def timed_onboard(spec: VerticalSpec, **kwargs: Any) -> tuple[OnboardResult, float]:
    """``pipelines.onboard.onboard(spec, **kwargs)`` and the wall time of the whole call (registry load,
    data, adaptation, logging); ``OnboardResult.seconds`` times the choice, adaptation and scoring only."""
    from pipelines.onboard import onboard

    start = time.perf_counter()
    onboarded = onboard(spec, **kwargs)
    return onboarded, time.perf_counter() - start


def timing_json(run: HeldoutRun, onboarded: OnboardResult, onboard_call_seconds: float) -> dict[str, Any]:
    """The wall-time fields of the fraud and maintenance JSON, in their order (``train_seconds`` sums the
    algorithms; imaging and robotics report the per-algorithm dict under that key instead)."""
    train = run.train_seconds
    return {"train_seconds": round(sum(train.values()), 2), "train_seconds_by_algorithm": train,
            "pipeline_seconds": round(run.seconds, 2), "onboard_seconds": round(onboarded.seconds, 3),
            "onboard_call_seconds": round(onboard_call_seconds, 2)}


def seeds_json(run: HeldoutRun, flags: HeldoutFlags) -> dict[str, Any]:
    """The multi-seed fields of every vertical JSON: the seeds, each seed's registered default and how often
    the ``auto`` row chose each candidate (all seeds, sites, shots and steps)."""
    from core.evaluation import kept_start_counts

    picks = run.rows[run.rows["method"] == "auto"].drop_duplicates(["site", "shots", "steps", "draw"])
    counts = picks["choice"].value_counts().to_dict() if "choice" in picks else {}
    return {"seeds": list(flags.seeds), "overrides": list(flags.set), "registered_default": {str(k): v for k, v in run.best_by_seed.items()},
            "pipeline_seconds_by_seed": {str(k): v for k, v in run.seconds_by_seed.items()},
            "auto_choices": {str(k): int(v) for k, v in counts.items()},
            "fallback_defaults": {str(k): v for k, v in run.fallback_by_seed.items()},
            "guard_kept_start": kept_start_counts(run.rows),
            "paired_by_seed": paired_by_seed(run.rows, run.result.paired),
            "paired_by_seed_site": paired_by_seed(run.rows, run.result.paired, per_site=True),
            "means_by_seed": means_by_seed(run.rows, run.result.paired)}


def paired_by_seed(rows: pd.DataFrame, paired: pd.DataFrame, per_site: bool = False) -> list[dict[str, Any]]:
    """Each seed's mean paired difference against ``fedavg+ft`` over all its test sites and draws, per method,
    shots and steps, on the headline metric (the one ``paired`` holds): whether a pooled result is every seed's
    or one seed's. ``per_site``: one entry per seed AND test site instead (key ``site``), the units of an
    interval clustered by seed (a seed's model serves all its draws, so its draws are not independent)."""
    from core.evaluation import paired_differences

    if paired.empty:
        return []
    metric = str(paired["metric"].iloc[0])
    out = []
    for seed, part in rows.groupby("seed"):
        diffs = paired_differences(part, metric)
        for _, r in diffs[(diffs["site"] != "ALL") if per_site else (diffs["site"] == "ALL")].iterrows():
            out.append({"seed": int(seed), **({"site": r["site"]} if per_site else {}), "method": r["method"],
                        "shots": int(r["shots"]), "steps": int(r["steps"]), "mean_diff": round(float(r["mean_diff"]), 4)})
    return out


def means_by_seed(rows: pd.DataFrame, paired: pd.DataFrame) -> list[dict[str, Any]]:
    """Each seed's mean of the headline metric over all its test sites and draws, per method, shots and steps
    (reference rows included): a claim against a reference row, e.g. the maintenance oracle's floor, per seed."""
    if paired.empty:
        return []
    part = rows[rows["metric"] == str(paired["metric"].iloc[0])]
    means = part.groupby(["seed", "method", "shots", "steps"], as_index=False)["value"].mean()
    return [{"seed": int(r.seed), "method": r.method, "shots": int(r.shots), "steps": int(r.steps),
             "mean": round(float(r.value), 4)} for r in means.itertuples()]


def by_seed(flags: Any, one_seed: Callable[[Any, int], dict[str, Any]],
            describe: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
    """``{seed: one_seed(flags, seed)}`` over ``flags.seeds`` (verticals loaded, ``flags.threads`` torch threads),
    one line printed per seed by ``describe``: the loop of the scripts that fit a reference per seed."""
    import torch

    import verticals

    verticals.load_all()
    torch.set_num_threads(flags.threads)
    out = {}
    for seed in flags.seeds:
        out[str(seed)] = result = one_seed(flags, seed)
        print(f"seed {seed}: {describe(result)}", flush=True)
    return out


def emit(out: dict[str, Any], flags: HeldoutFlags) -> None:
    """Print the closing JSON line (and write it to ``flags.json_out``), with the ``command`` that wrote it and
    the ``machine`` it was measured on (:func:`provenance.machine`: CPU, kernels, torch, commit)."""
    import json

    import shlex
    import sys

    script = Path(sys.argv[0]).resolve()
    where = script.relative_to(Path.cwd()) if script.is_relative_to(Path.cwd()) else script
    command = shlex.join(["python", str(where), *sys.argv[1:]])  # benchmarks/regenerate.py replays it
    line = json.dumps({**out, "command": command, "machine": machine()})
    if flags.json_out:
        Path(flags.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(flags.json_out).write_text(line + "\n")
    print(line)
