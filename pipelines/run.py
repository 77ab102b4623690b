"""``fml run <vertical>``: meta-train -> evaluate on held-out sites -> log to MLflow -> register.

Stages: 1 load and validate data, 2 site-shift report, 3 train FedAvg and each FML algorithm
(one Lightning ``Trainer.fit`` each), 4 choose adaptation settings on validation sites, 5 score test
sites, 6 tables and plots, 7 register the best meta-initialization (chosen on VALIDATION sites).
"""
from __future__ import annotations

import hashlib
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import mlflow
import pandas as pd
import torch
from pytorch_lightning.loggers import MLFlowLogger

from core import tracking
from core.algorithms.base import get_algorithm
from core.config import algorithm_settings, check_algorithm_overrides, flatten, to_plain
from core.evaluation import (Method, evaluate_sites, paired_differences, select_adaptation, summarize,
                             validation_fn)
from core.learner import MetaLearner, fit_meta_learner
from core.plots import plot_vs_shots, plot_vs_steps
from core.problem import Problem
from core.privacy import run_epsilon
from core.shift import site_shift_report
from core.types import Params
from core.vertical import VerticalSpec
from pipelines.console import console, print_frame, progress_bar


@dataclass
class RunResult:
    run_id: str
    summary: pd.DataFrame
    paired: pd.DataFrame
    selection: pd.DataFrame
    registered: Optional[dict[str, Any]]
    train_seconds: dict[str, float]
    output_dir: Path
    best_algorithm: str


def dataset_fingerprint(problem: Problem) -> dict[str, Any]:
    digest = hashlib.sha256()
    rows = 0
    for sid in sorted(problem.federation.sites):
        site = problem.federation.sites[sid]
        digest.update(sid.encode())
        for t in (site.x, site.y):
            digest.update(t.detach().contiguous().numpy().tobytes())
        rows += len(site)
    return {"sha256": digest.hexdigest(), "rows": rows, "sites": len(problem.federation.sites),
            "roles": problem.federation.roles}


def environment_info() -> dict[str, str]:
    import pytorch_lightning as pl

    info = {"python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__,
            "mlflow": mlflow.__version__}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = "unknown"
    return info


def preflight_shots(problem: Problem, cfg: Any) -> None:
    """Fail before training, not after it, when a validation/test site cannot serve the shots grid."""
    model = problem.make_model()
    gen = torch.Generator().manual_seed(0)
    for site in problem.federation.role("validation") + problem.federation.role("test"):
        for k in cfg.eval.shots:
            problem.few_shot_task(model, site, k, gen)


def train_one(problem: Problem, algorithm: str, cfg: Any, run_id: str, out: Path, progress: bool,
              start: Optional[Params] = None) -> MetaLearner:
    """Meta-train one algorithm (FedAvg included) with validation-site checkpoint selection."""
    settings = algorithm_settings(cfg, algorithm)
    inner = settings.inner
    val_sites = problem.federation.role("validation")
    select_shots = cfg.eval.select_shots or sorted(cfg.eval.shots)[len(cfg.eval.shots) // 2]
    validate = None
    if val_sites:
        validate = validation_fn(problem, val_sites, shots=select_shots, steps=inner.steps, lr=inner.lr,
                                 draws=2, seed=cfg.seed, inner=inner)
    learner = MetaLearner(problem, algorithm, inner, cfg.fed, settings.server, cfg.seed, validate, start=start)
    logger = MLFlowLogger(tracking_uri=tracking.tracking_uri(), run_id=run_id, prefix=algorithm)
    monitor = f"val/{problem.headline}" if validate else None
    fit_meta_learner(learner, logger=logger, checkpoint_dir=str(out / "checkpoints" / algorithm), monitor=monitor,
                     mode="max" if problem.higher_is_better else "min", progress=progress)
    return learner


def run_pipeline(spec: VerticalSpec, cfg: Any, *, progress: bool = True) -> RunResult:
    """Run the vertical end to end; nothing is registered unless every stage succeeded."""
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # 1. data (validated before any MLflow run exists)
    console.rule(f"[bold]fml run {spec.name}")
    problem = spec.prepare(cfg.data, cfg.seed)
    if spec.rows_based:
        preflight_shots(problem, cfg)
    tracking.setup_tracking()
    experiment = cfg.tracking.experiment or f"fml-{spec.name}"
    exp_id = tracking.ensure_experiment(experiment)
    algorithms = list(dict.fromkeys(a for a in cfg.algorithms if a != "fedavg"))
    for name in algorithms:
        get_algorithm(name)
    check_algorithm_overrides(cfg, ["fedavg", *algorithms])
    run_name = f"{spec.name}-{'+'.join(algorithms)}-seed{cfg.seed}"
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        run_id = run.info.run_id
        plain = to_plain(cfg)
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(plain).items()})
        mlflow.log_dict(plain, "config.yaml")
        mlflow.log_dict(dataset_fingerprint(problem), "dataset_fingerprint.json")
        mlflow.set_tags({"vertical": spec.name, **{f"env.{k}": v for k, v in environment_info().items()}})
        # 2. site-shift report
        if spec.rows_based:
            shift = site_shift_report(problem.federation, seed=cfg.seed)
            print_frame(shift, "Site-shift report (domain_auroc 0.5 = indistinguishable from training sites)")
            shift.to_csv(out / "site_shift.csv", index=False)
            mlflow.log_table(shift, "site_shift.json")
        # 3. meta-training
        learners: dict[str, MetaLearner] = {}
        train_seconds: dict[str, float] = {}
        for name in ["fedavg", *algorithms]:
            console.print(f"[bold cyan]meta-training {name}[/] ({cfg.fed.rounds} rounds)")
            start = time.perf_counter()
            warm = learners["fedavg"].meta_params() if cfg.warm_start and name != "fedavg" else None
            learners[name] = train_one(problem, name, cfg, run_id, out, progress, warm)
            train_seconds[name] = time.perf_counter() - start
        mlflow.log_metrics({f"time/train_seconds_{k}": v for k, v in train_seconds.items()})
        privacy = privacy_spent(problem, cfg.fed, learners)
        if privacy:
            console.print("site-level DP (delta " + f"{cfg.fed.dp_delta:g}): " +
                          ", ".join(f"{k} epsilon {v:.2f}" for k, v in privacy.items()))
        # 4-7. adaptation settings, held-out sites, tables, registration
        torch.manual_seed(cfg.seed + 1)
        local_init = {k: v.detach() for k, v in problem.make_model().named_parameters()}
        fedavg_inner = algorithm_settings(cfg, "fedavg").inner
        methods = [
            Method("local", local_init, trained_lr=cfg.inner.lr),
            Method("fedavg", learners["fedavg"].meta_params(), adapts=False),
            Method("fedavg+ft", learners["fedavg"].meta_params(), trained_lr=fedavg_inner.lr, inner=fedavg_inner),
            *[Method(a, learners[a].meta_params(), trained_lr=learners[a].inner.lr, inner=learners[a].inner)
              for a in algorithms],
        ]
        report = evaluate_and_register(spec, problem, cfg, learners["fedavg"].model, methods,
                                       candidates=algorithms or ["fedavg+ft"], run_id=run_id, out=out,
                                       progress=progress, privacy=privacy)
        return RunResult(run_id, report.summary, report.paired, report.selection, report.registered, train_seconds,
                         out, report.best.name)


def privacy_spent(problem: Problem, fed: Any, learners: dict[str, MetaLearner]) -> dict[str, float]:
    """Site-level epsilon of each trained model (every round it ran counts, not only up to the kept
    checkpoint); empty without DP noise."""
    if fed.dp_noise <= 0:
        return {}
    sites = len(problem.train_site_ids())
    return {name: run_epsilon(fed, sites, learner.global_step) for name, learner in learners.items()}


@dataclass
class HeldoutReport:
    summary: pd.DataFrame
    paired: pd.DataFrame
    selection: pd.DataFrame
    best: Method
    heldout_value: float
    model_uri: str
    registered: Optional[dict[str, Any]]


def evaluate_and_register(spec: VerticalSpec, problem: Problem, cfg: Any, model: torch.nn.Module,
                          methods: list[Method], *, candidates: list[str], run_id: str, out: Path,
                          progress: bool = True, extra_tags: Optional[dict[str, str]] = None,
                          privacy: Optional[dict[str, float]] = None) -> HeldoutReport:
    """Stages 4-7 of a run, inside its active MLflow run, shared by ``fml run`` and the Flower engine's
    finish hook: choose adaptation settings of every method on validation sites, score the test sites over
    the shots x steps grid, write and log tables and plots, log the best of ``candidates`` (chosen on
    VALIDATION sites) as the meta-initialization and register it. ``model`` gives the architecture;
    ``privacy`` (method -> site-level epsilon) is recorded with the registered model."""
    # 4. adaptation settings on validation sites
    select_shots = cfg.eval.select_shots or sorted(cfg.eval.shots)[len(cfg.eval.shots) // 2]
    val_sites = problem.federation.role("validation") or problem.federation.role("train")[:5]
    selection = select_adaptation(problem, model, methods, val_sites, shots=select_shots,
                                  steps_grid=cfg.eval.steps, lr_grid=cfg.eval.lr_grid,
                                  draws=cfg.eval.select_draws, seed=cfg.seed, inner=cfg.inner)
    selection.to_csv(out / "adaptation_selection.csv", index=False)
    if not selection.empty:
        mlflow.log_table(selection, "adaptation_selection.json")
    # 5. held-out test sites
    test_sites = problem.federation.role("test")
    total = len(test_sites) * len(cfg.eval.shots) * cfg.eval.draws
    with progress_bar(progress) as bar:
        task = bar.add_task("held-out evaluation", total=total)
        rows = evaluate_sites(problem, model, methods, test_sites, shots_grid=cfg.eval.shots,
                              steps_grid=cfg.eval.steps, draws=cfg.eval.draws, seed=cfg.seed,
                              inner=cfg.inner, progress=lambda: bar.advance(task))
    if spec.reference_baselines is not None:
        rows = pd.concat([rows, spec.reference_baselines(problem, cfg, test_sites)], ignore_index=True)
    # 6. tables and plots
    summary = summarize(rows)
    paired = paired_differences(rows, problem.headline)
    rows.to_parquet(out / "evaluation_rows.parquet", index=False)
    summary.to_csv(out / "evaluation_summary.csv", index=False)
    summary.to_parquet(out / "evaluation_summary.parquet", index=False)
    paired.to_csv(out / "paired_differences.csv", index=False)
    mlflow.log_table(summary, "evaluation_summary.json")
    if not paired.empty:
        mlflow.log_table(paired, "paired_differences.json")
    plots = [plot_vs_steps(summary, problem.headline, out / "adaptation_vs_steps.png"),
             plot_vs_shots(summary, problem.headline, max(cfg.eval.steps), out / "adaptation_vs_shots.png")]
    for f in [out / "evaluation_summary.csv", out / "paired_differences.csv", *plots]:
        mlflow.log_artifact(str(f), "evaluation")
    headline_cells = summary[(summary["site"] == "ALL") & (summary["metric"] == problem.headline)]
    mlflow.log_metrics({f"test/{problem.headline}/{_metric_safe(r['method'])}/shots{r['shots']}_steps{r['steps']}":
                        float(r["mean"]) for _, r in headline_cells.iterrows()})
    # 7. log and register the meta-initialization chosen on validation sites
    sign = 1 if problem.higher_is_better else -1
    best = max((m for m in methods if m.name in candidates), key=lambda m: sign * m.selection_score)
    held = headline_cells[(headline_cells["method"] == best.name) & (headline_cells["shots"] == select_shots)
                          & (headline_cells["steps"] == best.best_steps)]
    held_value = float(held["mean"].iloc[0]) if not held.empty else float("nan")
    extra_tags = extra_tags or {}
    info = {"vertical": spec.name, "algorithm": best.name, "adapt_lr": best.best_lr,
            "adapt_steps": best.best_steps, "shots": select_shots, "headline": problem.headline,
            "higher_is_better": problem.higher_is_better, "heldout_value": held_value,
            "inner": to_plain(cfg.inner), "preprocessing": problem.preprocessing, "run_id": run_id,
            "data": to_plain(cfg.data), **extra_tags}
    if privacy:
        mlflow.log_metrics({f"privacy/epsilon_{k}": v for k, v in privacy.items()})
        info["privacy"] = {"epsilon": privacy[_trained_name(best.name)], "delta": cfg.fed.dp_delta,
                           "clip": cfg.fed.dp_clip, "noise_multiplier": cfg.fed.dp_noise, "unit": "site"}
        extra_tags = {**extra_tags, "dp_epsilon": f"{info['privacy']['epsilon']:.3f}"}
    model_uri = tracking.log_meta_init(model, best.meta, info, problem.input_example())
    mlflow.set_tags({"best_algorithm": best.name, "meta_init_uri": model_uri})
    registered = None
    if cfg.tracking.register:
        name = cfg.tracking.model_name or f"fml-{spec.name}"
        tags = {"algorithm": best.name, "shots": select_shots, "adapt_lr": best.best_lr,
                "adapt_steps": best.best_steps, "run_id": run_id, "vertical": spec.name, **extra_tags}
        version, alias, reason = tracking.register(model_uri, name, tags, problem.headline, held_value,
                                                   problem.higher_is_better)
        mlflow.set_tags({"registered_model": name, "registered_version": version, "alias_decision": reason})
        registered = {"name": name, "version": version, "alias": alias, "reason": reason}
    _print_closing(summary, paired, problem, best, registered, select_shots)
    return HeldoutReport(summary, paired, selection, best, held_value, model_uri, registered)


def _trained_name(method: str) -> str:
    return "fedavg" if method == "fedavg+ft" else method


def _metric_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. " else "-" for c in name.replace("+", "-"))


def _print_closing(summary: pd.DataFrame, paired: pd.DataFrame, problem: Problem, best: Method,
                   registered: Optional[dict], shots: int) -> None:
    cells = summary[(summary["site"] == "ALL") & (summary["metric"] == problem.headline)].copy()
    cells["cell"] = cells.apply(lambda r: f"{r['mean']:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]", axis=1)
    table = cells.pivot_table(index=["method", "shots"], columns="steps", values="cell", aggfunc="first").fillna("-")
    print_frame(table.reset_index(), f"Held-out {problem.headline} (mean [95% CI]) by adaptation steps")
    if not paired.empty:
        p = paired[paired["site"] == "ALL"].copy()
        p["diff"] = p.apply(lambda r: f"{r['mean_diff']:+.3f} [{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}]", axis=1)
        print_frame(p.pivot_table(index=["method", "shots"], columns="steps", values="diff", aggfunc="first")
                    .fillna("-").reset_index(), "Paired difference vs fedavg+ft (same draws)")
    console.print(f"best on validation sites: [bold]{best.name}[/] (adapt {best.best_steps} steps at lr {best.best_lr})")
    if registered:
        console.print(f"registered [bold]{registered['name']}[/] v{registered['version']} as "
                      f"@{registered['alias']}: {registered['reason']}")
