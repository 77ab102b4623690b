"""``fml run <vertical>``: meta-train -> evaluate on held-out sites -> log to MLflow -> register.

Stages: 1 load and validate data, 2 site-shift report, 3 train FedAvg and each FML algorithm
(one Lightning ``Trainer.fit`` each), 4 choose adaptation settings on validation sites, 5 score test
sites (with the ``auto`` row: the onboarding choice per draw), 6 tables and plots, 7 register a bundle of
starting points -- the tuned FedAvg baseline and the best FML algorithm -- whose default is chosen on
VALIDATION sites; a new site chooses among them at onboarding (``core.choice``).
"""
from __future__ import annotations

import copy
import hashlib
import json
import platform
import subprocess
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import mlflow
import pandas as pd
import torch
from pytorch_lightning.loggers import MLFlowLogger

from core import tracking
from core.algorithms.base import get_algorithm
from core.config import algorithm_settings, check_algorithm_overrides, check_run_config, flatten, to_plain
from core.context import HOW_TO_ADD
from core.devices import describe_device, resolve_device
from core.evaluation import (BASELINE, AutoChoice, Method, adapted_trial_steps, choice_counts, evaluate_auto,
                             evaluate_sites, kept_start_counts, on_device, paired_differences, select_adaptation, summarize, trained_name,
                             validation_fn, with_recipes)
from core.initialization import mismatch
from core.learner import MetaLearner, fit_meta_learner
from core.plots import plot_vs_shots, plot_vs_steps
from core.problem import Problem
from core.recipes import DEFAULT_RECIPE, RECIPES, RecipeNotApplicable
from core.site_statistics import PREPROCESSING_KEY as SITE_STATISTICS
from core.tasks import LazySite
from core.privacy import run_epsilon
from core.shift import site_shift_report
from core.types import Params
from core.vertical import VerticalSpec
from pipelines.closing import adapted_trials_sentences, guard_sentence, print_closing, split_draws
from pipelines.console import console, print_frame, progress_bar
from pipelines.dataset_identity import dataset_identity
from pipelines.model_card import model_card
from pipelines.registration_choice import (bundle_of, candidate_recipes, choices_at_unsplittable_shots, heldout_veto,
                                           unsplit_defaults)
from pipelines.run_state import ResumeError, RunState


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
    rows: Optional[int] = 0
    for sid in sorted(problem.federation.sites):
        site = problem.federation.sites[sid]
        digest.update(sid.encode())
        if isinstance(site, LazySite):  # its identity determines its rows: no need to build 100,000 sites
            digest.update(site.identity)
            rows = None if rows is None or site.size is None else rows + site.size  # unknown until built
            continue
        rows = None if rows is None else rows + len(site)
        for t in (site.x, site.y):
            digest.update(t.detach().contiguous().numpy().tobytes())
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


#: An algorithm meta-trained with an inner-loop group adapts that group at evaluation and onboarding too.
GROUP_RECIPES = {"head": "head", "body": "body", "context": "context"}


def algorithm_recipe(name: str, group: str) -> str:
    """The recipe a model of algorithm ``name`` adapts with at evaluation and onboarding: the one its inner loop
    is (``r2d2``: ``newton-head``), else its inner-loop group's (its own, or ``group`` = ``inner.group``)."""
    algorithm = get_algorithm(name)
    return algorithm.recipe or GROUP_RECIPES.get(algorithm.inner_group or group, DEFAULT_RECIPE)


def check_clients_per_round(problem: Problem, clients_per_round: int) -> None:
    """A round cannot sample more distinct sites than there are training sites (checked before any MLflow run)."""
    train = problem.train_site_ids()
    if clients_per_round > len(train):
        raise ValueError(f"--fed.clients-per-round {clients_per_round} exceeds the {len(train)} training sites of "
                         f"this federation ({', '.join(train[:8])}{' ...' if len(train) > 8 else ''}); lower it to at "
                         f"most {len(train)} or give the federation more training sites")


def train_one(problem: Problem, algorithm: str, cfg: Any, run_id: str, out: Path, progress: bool,
              start: Optional[Params] = None, resume_from: Optional[Path] = None,
              callbacks: Sequence[Any] = ()) -> MetaLearner:
    """Meta-train one algorithm (FedAvg included) with validation-site checkpoint selection, continuing from
    the checkpoint ``resume_from`` when given; ``callbacks`` are more Lightning callbacks (``fml tune``'s pruning)."""
    settings = algorithm_settings(cfg, algorithm)
    inner = settings.inner
    validate = round_validation(problem, cfg, inner)
    learner = MetaLearner(problem, algorithm, inner, settings.fed, settings.server, cfg.seed, validate, start=start)
    logger = MLFlowLogger(tracking_uri=tracking.tracking_uri(), run_id=run_id, prefix=algorithm)
    monitor = checkpoint_monitor(problem, cfg) if validate else None
    fit_meta_learner(learner, logger=logger, checkpoint_dir=str(out / "checkpoints" / algorithm), monitor=monitor,
                     mode="max" if problem.higher_is_better else "min", progress=progress,
                     resume_from=str(resume_from) if resume_from else None, extra_callbacks=callbacks,
                     device=cfg.device, average_last=cfg.eval.checkpoint_average)
    rounds = ", ".join(map(str, learner.kept_rounds))
    client = mlflow.MlflowClient(tracking.tracking_uri())
    client.set_tag(run_id, f"{algorithm}.kept_rounds", rounds)
    client.set_tag(run_id, f"{algorithm}.kept_by", learner.kept_by)
    if cfg.eval.checkpoint_average:
        console.print(f"{algorithm}: the mean of rounds {rounds} is kept (--eval.checkpoint-average)")
    return learner


Validate = Callable[[torch.nn.Module, Params], dict[str, float]]


def selection_shots(cfg: Any) -> int:
    """The shots at which validation ranks rounds and chooses the registered default: ``eval.select_shots``, else
    the middle of ``eval.shots``."""
    return cfg.eval.select_shots or sorted(cfg.eval.shots)[len(cfg.eval.shots) // 2]


def round_validation(problem: Problem, cfg: Any, inner: Any) -> Optional[Validate]:
    """The few-shot validation that ranks a training run's rounds (None without validation sites): adaptation
    with the algorithm's inner loop at the selection shots, on ``eval.checkpoint_draws`` fixed draws per
    validation site. ``fml run`` and the Flower ServerApp (``pipelines.federate_server.round_selection``) use it."""
    val_sites = problem.federation.role("validation")
    if not val_sites:
        return None
    return validation_fn(problem, val_sites, shots=selection_shots(cfg), steps=inner.steps, lr=inner.lr,
                         draws=cfg.eval.checkpoint_draws, seed=cfg.seed, inner=inner)


#: How a run chose the parameters it keeps (``<algorithm>.kept_by``) -> the model card's words.
KEPT_BY = {"average": "the mean of rounds {rounds}", "validation": "round {rounds}, the best on the validation sites",
           "last": "round {rounds}, the last"}


def kept_rounds(run_id: str) -> dict[str, str]:
    """Trained model -> which round(s) its parameters come from, in words ("the mean of rounds 100, 150, 200"), from
    the run's ``<algorithm>.kept_rounds`` and ``<algorithm>.kept_by`` tags (:func:`train_one` sets them)."""
    tags = mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id).data.tags
    suffix = ".kept_rounds"
    return {k[:-len(suffix)]: KEPT_BY.get(tags.get(f"{k[:-len(suffix)]}.kept_by", ""), "rounds {rounds}").format(rounds=v)
            for k, v in tags.items() if k.endswith(suffix)}


def checkpoint_monitor(problem: Problem, cfg: Any) -> str:
    """The logged validation key that keeps the best round: ``val/<--eval.checkpoint-metric>`` (default the
    headline); refused, naming the option, when the vertical does not allow that metric."""
    metric = cfg.eval.checkpoint_metric or problem.headline
    allowed = (problem.headline, *problem.checkpoint_metrics)
    if metric not in allowed:
        raise ValueError(f"--eval.checkpoint-metric {metric}: this vertical keeps the best round by "
                         f"{' or '.join(allowed)} (metrics in the headline's direction)")
    return f"val/{metric}"


def trained_methods(learners: dict[str, MetaLearner], algorithms: list[str], cfg: Any) -> list[Method]:
    """The starts meta-training made: FedAvg's model unadapted and fine-tuned, and each FML algorithm with its
    recipe (each with its own inner settings)."""
    fedavg_inner = algorithm_settings(cfg, "fedavg").inner
    return [Method("fedavg", learners["fedavg"].meta_params(), adapts=False),
            Method("fedavg+ft", learners["fedavg"].meta_params(), trained_lr=fedavg_inner.lr, inner=fedavg_inner),
            *[Method(a, learners[a].meta_params(), trained_lr=learners[a].inner.lr, inner=learners[a].inner,
                     recipes=(algorithm_recipe(a, learners[a].inner.group),)) for a in algorithms]]


def trained_learner(problem: Problem, algorithm: str, cfg: Any, state: dict, where: str = "the saved state") -> MetaLearner:
    """A learner whose meta-training finished before the run was interrupted, from its saved final state
    (``where``: the file it was read from, named in the error when it does not fit the model)."""
    settings = algorithm_settings(cfg, algorithm)
    learner = MetaLearner(problem, algorithm, settings.inner, settings.fed, settings.server, cfg.seed, None)
    differs = mismatch(learner.state_dict(), state["state_dict"])
    if differs:
        raise ResumeError(f"--resume: {where} does not match {algorithm}'s model ({differs}); it was saved by "
                          "other code or options: run again without --resume")
    learner.load_state_dict(state["state_dict"])
    learner.diverged_at = state.get("diverged_at")
    return learner


def check_groups_and_recipes(problem: Problem, cfg: Any, algorithms: list[str]) -> None:
    """Before any training: every inner-loop group the run asks for exists on the model (CAVIA needs a context
    vector), no group leaves the rest of a randomly initialized model untrained (Reptile's direction is zero
    outside its inner-loop group), and every recipe of ``--eval.recipes`` applies to its model and loss (each
    recipe's ``check``)."""
    model = problem.make_model()
    groups = problem.param_groups(model)
    params, loss_fn = dict(model.named_parameters()), problem.loss_fn(model)
    for name in cfg.eval.recipes:
        try:
            RECIPES.get(name).check(loss_fn, params)
        except RecipeNotApplicable as err:
            raise RecipeNotApplicable(f"--eval.recipes {name}: {err}") from None
    for name in algorithms:
        group = get_algorithm(name).inner_group or algorithm_settings(cfg, name).inner.group
        if group != "all" and group not in groups:
            hint = f" ({HOW_TO_ADD})" if group == "context" else ""
            raise ValueError(f"{name}'s inner loop adapts the {group!r} parameter group, which this model does not "
                             f"have{hint}; its groups: {', '.join(sorted(groups))}")
        check_group_trains_the_rest(name, group, cfg.warm_start)


def check_group_trains_the_rest(name: str, group: str, warm_start: bool) -> None:
    """An algorithm whose direction is zero outside its inner-loop group (Reptile: init - adapted) leaves the rest
    of a randomly initialized model untrained: refused unless the run starts from the trained FedAvg model."""
    if group != "all" and not get_algorithm(name).trains_outside_group and not warm_start:
        raise ValueError(f"{name} with inner.group {group!r} moves only that group (its direction is init - "
                         f"adapted), so every other parameter would stay at its random initialization (on fraud: "
                         f"0.10 PR-AUC below fedavg+ft); add --warm-start to start from the trained FedAvg model "
                         f"(fml run), or leave {name} out of --algorithms")


def run_pipeline(spec: VerticalSpec, cfg: Any, *, progress: bool = True) -> RunResult:
    """Run the vertical end to end; nothing is registered unless every stage succeeded."""
    check_run_config(cfg)
    device = resolve_device(cfg.device)
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # 1. data (validated before any MLflow run exists)
    console.rule(f"[bold]fml run {spec.name}[/] on {describe_device(device)}")
    problem = spec.build(cfg.data, cfg.seed)
    if spec.rows_based:
        preflight_shots(problem, cfg)
    check_clients_per_round(problem, cfg.fed.clients_per_round)
    algorithms = list(dict.fromkeys(a for a in cfg.algorithms if a != "fedavg"))
    for name in algorithms:
        get_algorithm(name)
    check_algorithm_overrides(cfg, ["fedavg", *algorithms])
    check_groups_and_recipes(problem, cfg, algorithms)
    checkpoint_monitor(problem, cfg)  # refuse an unknown --eval.checkpoint-metric before any training
    if not spec.rows_based and any(algorithm_settings(cfg, a).inner.meta_dropout > 0 for a in algorithms):
        raise ValueError(f"inner.meta_dropout drops features of row data; a {spec.name} site's support is collected "
                         "by the policy itself: use inner.meta_dropout=0")
    tracking.setup_tracking()
    experiment = cfg.tracking.experiment or f"fml-{spec.name}"
    exp_id = tracking.ensure_experiment(experiment)
    for orphan in tracking.close_orphaned_runs(exp_id):
        console.print(f"[yellow]MLflow run {orphan} was left RUNNING by a process that no longer exists: marked KILLED[/]")
    run_name = f"{spec.name}-{'+'.join(algorithms)}-seed{cfg.seed}"
    resumed = RunState.resume(out, cfg) if cfg.resume else None
    if resumed is None:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a stale last.ckpt would shadow this run's
    start_args = {"run_id": resumed.run_id} if resumed else {"experiment_id": exp_id, "run_name": run_name}
    with mlflow.start_run(**start_args) as run:
        run_id = run.info.run_id
        state = resumed or RunState.start(out, cfg, run_id)
        mlflow.set_tags({"vertical": spec.name, "device": describe_device(device), **tracking.owner_tags(),
                         **{f"env.{k}": v for k, v in environment_info().items()}})
        if resumed:
            console.print(f"[bold]resuming MLflow run {run_id}[/]: finished {', '.join(state.trained) or 'nothing'}"
                          " before the interruption")
            mlflow.set_tag("resumed", "true")
        else:
            plain = to_plain(cfg)
            # flower.* configures `fml federate` runs only: an in-process run's params leave them out
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(plain).items() if not k.startswith("flower.")})
            mlflow.log_dict(plain, "config.yaml")
            mlflow.log_dict(dataset_fingerprint(problem), "dataset_fingerprint.json")
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
            if name in state.trained:
                learners[name] = trained_learner(problem, name, cfg, state.final(name), str(state.final_path(name)))
                train_seconds[name] = state.seconds[name]
                console.print(f"[bold cyan]{name}[/]: meta-training had finished before the interruption (restored)")
                continue
            last = out / "checkpoints" / name / "last.ckpt"
            resume_from = last if resumed and last.exists() else None
            console.print(f"[bold cyan]meta-training {name}[/] ({algorithm_settings(cfg, name).rounds} rounds"
                          f"{', continuing from ' + str(resume_from) if resume_from else ''})")
            start = time.perf_counter()
            warm = learners["fedavg"].meta_params() if cfg.warm_start and name != "fedavg" else None
            learners[name] = train_one(problem, name, cfg, run_id, out, progress, warm, resume_from)
            train_seconds[name] = time.perf_counter() - start
            state.finish(name, learners[name], train_seconds[name])
            if learners[name].diverged_at is not None:
                console.print(f"[bold yellow]{name}: the update of round {learners[name].diverged_at} was NaN/inf; "
                              "meta-training stopped there and keeps the best validated (or last finite) "
                              "parameters. Lower the server or inner learning rate.[/]")
                mlflow.set_tag(f"diverged_round.{name}", learners[name].diverged_at)
        mlflow.log_metrics({f"time/train_seconds_{k}": v for k, v in train_seconds.items()})
        privacy = privacy_spent(problem, cfg.fed, learners)
        if privacy:
            console.print("site-level DP (delta " + f"{cfg.fed.dp_delta:g}): " +
                          ", ".join(f"{k} epsilon {v:.2f}" for k, v in privacy.items()))
        # 4-7. adaptation settings, held-out sites, tables, registration
        torch.manual_seed(cfg.seed + 1)
        local_init = {k: v.detach() for k, v in problem.make_model().named_parameters()}
        methods = [Method("local", local_init, trained_lr=cfg.inner.lr), *trained_methods(learners, algorithms, cfg)]
        methods, ablation = with_recipes(methods, cfg.eval.recipes)
        report = evaluate_and_register(spec, problem, cfg, learners["fedavg"].model, methods + ablation,
                                       candidates=["fedavg+ft", *algorithms], run_id=run_id, out=out,
                                       progress=progress, privacy=privacy)
        state.complete()
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
    the shots x steps grid (with the ``auto`` row: the per-site choice among the bundled candidates), write
    and log tables and plots, log the bundle -- the best of ``candidates`` on VALIDATION sites as the
    default, with the runner-ups -- and register it. ``model`` gives the architecture; ``privacy`` (method ->
    site-level epsilon) is recorded with the registered model."""
    # 4. adaptation settings on validation sites, on the run's device (the bundle is saved from the CPU)
    device = resolve_device(cfg.device)
    model, methods = copy.deepcopy(model).to(device), on_device(methods, device)
    select_shots = selection_shots(cfg)
    val_sites = problem.federation.role("validation") or problem.federation.role("train")[:5]
    selection = select_adaptation(problem, model, methods, val_sites, shots=select_shots,
                                  steps_grid=cfg.eval.steps, lr_grid=cfg.eval.lr_grid,
                                  draws=cfg.eval.select_draws, seed=cfg.seed, inner=cfg.inner)
    selection.to_csv(out / "adaptation_selection.csv", index=False)
    if not selection.empty:
        mlflow.log_table(selection, "adaptation_selection.json")
    bundle, default_reason = bundle_of(methods, candidates, problem.higher_is_better)
    names = [m.name for m in bundle]
    default_by_steps = unsplit_defaults(bundle, cfg.eval.steps, problem.higher_is_better)
    used_by_steps = dict(default_by_steps)  # what the auto rows use, before a registration veto
    # 5. held-out test sites (the auto row sees only each draw's support)
    test_sites = problem.federation.role("test")
    total = len(test_sites) * len(cfg.eval.shots) * cfg.eval.draws
    grid = dict(shots_grid=cfg.eval.shots, steps_grid=cfg.eval.steps, draws=cfg.eval.draws, seed=cfg.seed,
                inner=cfg.inner)
    with progress_bar(progress) as bar:
        task = bar.add_task("held-out evaluation", total=total)
        rows = evaluate_sites(problem, model, methods, test_sites, progress=lambda: bar.advance(task),
                              ensemble=names, guard=cfg.eval.guard, **grid)
    trial_table = pd.DataFrame()  # where a site of rollouts tries the starts adapted (validation sites decide)
    if len(bundle) > 1:
        auto = AutoChoice(tuple(names), names[0], cfg.eval.choice_folds, default_by_steps)
        # a robot's support is rollouts: where validation robots did better trying the starts adapted, so does auto
        trial_shots, trial_table = adapted_trial_steps(problem, model, methods, val_sites, auto, guard=cfg.eval.guard,
                                                       **{**grid, "draws": cfg.eval.select_draws})
        auto = replace(auto, adapted_trials=trial_shots)
        if not trial_table.empty:
            trial_table.to_csv(out / "adapted_trials_validation.csv", index=False)
            mlflow.log_artifact(str(out / "adapted_trials_validation.csv"), "evaluation")
        rows = pd.concat([rows, evaluate_auto(problem, model, methods, test_sites, rows, auto, **grid)],
                         ignore_index=True)
    if spec.reference_baselines is not None:
        rows = pd.concat([rows, spec.reference_baselines(problem, cfg, test_sites)], ignore_index=True)
    # 6. tables and plots
    summary = summarize(rows)
    paired = paired_differences(rows, problem.headline)
    choices = choice_counts(rows)
    kept = kept_start_counts(rows)
    (out / "guard_kept_start.json").write_text(json.dumps({"guard": cfg.eval.guard, "kept_adapted": kept}, indent=1))
    rows.to_parquet(out / "evaluation_rows.parquet", index=False)
    summary.to_csv(out / "evaluation_summary.csv", index=False)
    summary.to_parquet(out / "evaluation_summary.parquet", index=False)
    paired.to_csv(out / "paired_differences.csv", index=False)
    choices.to_csv(out / "auto_choices.csv", index=False)
    mlflow.log_table(summary, "evaluation_summary.json")
    if not paired.empty:
        mlflow.log_table(paired, "paired_differences.json")
    plots = [plot_vs_steps(summary, problem.headline, out / "adaptation_vs_steps.png"),
             plot_vs_shots(summary, problem.headline, max(cfg.eval.steps), out / "adaptation_vs_shots.png")]
    for f in [out / "evaluation_summary.csv", out / "paired_differences.csv", out / "auto_choices.csv",
              out / "guard_kept_start.json", *plots]:
        mlflow.log_artifact(str(f), "evaluation")
    headline_cells = summary[(summary["site"] == "ALL") & (summary["metric"] == problem.headline)]
    mlflow.log_metrics({f"test/{problem.headline}/{_metric_safe(r['method'])}/shots{r['shots']}_steps{r['steps']}":
                        float(r["mean"]) for _, r in headline_cells.iterrows()})
    # where a support cannot be split (one image per class, rollouts) the site gets the default; what validation
    # supports of THAT size would choose is recorded and said, not used (tried as a rule: a wash, verticals/new_sites.md)
    choice_at_shots = choices_at_unsplittable_shots(problem, model, bundle, val_sites, cfg, select_shots)
    # 7. log and register the bundle; its default is the validation winner unless the held-out sites veto it
    veto = heldout_veto(paired, bundle[0], names, select_shots, problem.higher_is_better)
    if veto:
        bundle = sorted(bundle, key=lambda m: m.name != BASELINE)
        default_by_steps[bundle[0].best_steps] = BASELINE
    best = bundle[0]

    def held(method: str, steps: int) -> float:
        cell = headline_cells[(headline_cells["method"] == method) & (headline_cells["shots"] == select_shots)
                              & (headline_cells["steps"] == steps)]
        return float(cell["mean"].iloc[0]) if not cell.empty else float("nan")

    held_value = held(best.name, best.best_steps)
    baseline_won = trained_name(best.name) == "fedavg"  # the FedAvg model, whatever its recipe
    dataset = dataset_identity(spec, cfg.data, problem)  # decides the default model name, recorded in fml.json
    extra_tags = extra_tags or {}
    info = {"vertical": spec.name, "algorithm": best.name, "recipe": best.recipe, "adapt_lr": best.best_lr,
            "adapt_steps": best.best_steps, "shots": select_shots, "headline": problem.headline,
            "higher_is_better": problem.higher_is_better, "heldout_value": held_value,
            "heldout_auto_value": held("auto", best.best_steps),
            "candidates": candidate_recipes(bundle, cfg.inner), "choice_folds": cfg.eval.choice_folds,
            "default_by_steps": {str(k): v for k, v in default_by_steps.items()},
            "validation_choice_by_shots": {str(k): {str(s): v for s, v in d.items()} for k, d in choice_at_shots.items()},
            "adapted_trials_by_shots": {str(k): list(v) for k, v in auto.adapted_trials.items()} if len(bundle) > 1 else {},
            "default_reason": veto or default_reason, "baseline_won": baseline_won,
            "inner": to_plain(cfg.inner), "preprocessing": problem.preprocessing, "run_id": run_id,
            "data": to_plain(cfg.data), "dataset": dataset.as_dict(), **extra_tags}
    fallback = out / "fallback_defaults.json"  # the start of a site whose support cannot be split
    fallback.write_text(json.dumps({"shots": select_shots, "default_by_steps": {str(s): v for s, v in used_by_steps.items()},
                                    "validation_choice_by_shots": info["validation_choice_by_shots"],
                                    "adapted_trials_by_shots": info["adapted_trials_by_shots"]}, indent=1))
    mlflow.log_artifact(str(fallback), "evaluation")
    if privacy:
        mlflow.log_metrics({f"privacy/epsilon_{k}": v for k, v in privacy.items()})
        info["privacy"] = {"epsilon": max(privacy[trained_name(m.name)] for m in bundle), "delta": cfg.fed.dp_delta,
                           "clip": cfg.fed.dp_clip, "noise_multiplier": cfg.fed.dp_noise, "unit": "site"}
        extra_tags = {**extra_tags, "dp_epsilon": f"{info['privacy']['epsilon']:.3f}"}
    model_uri = tracking.log_meta_init(model, best.meta, info, problem.input_example(),
                                       others={m.name: m.meta for m in bundle[1:]})
    loaded = tracking.load_meta_init(model_uri)  # the bundle round-trips before anything is registered
    bundle_tags = {"candidates": ",".join(m.name for m in bundle), "baseline_won": str(baseline_won).lower(),
                   "default_reason": info["default_reason"], "bundle_mb": f"{loaded.size_bytes / 2**20:.2f}",
                   "load_seconds": f"{loaded.load_seconds:.2f}"}
    mlflow.set_tags({"best_algorithm": best.name, "meta_init_uri": model_uri, **bundle_tags})
    registered = None
    if cfg.tracking.register:
        name = cfg.tracking.model_name or dataset.model_name(spec.name)
        fingerprint = dataset_fingerprint(problem)
        identity = tracking.evaluation_identity(vertical=spec.name, data=fingerprint["sha256"], roles=fingerprint["roles"],
                                                headline=problem.headline, shots=list(cfg.eval.shots),
                                                steps=list(cfg.eval.steps), draws=cfg.eval.draws,
                                                select_shots=select_shots)
        tags = {"algorithm": best.name, "recipe": best.recipe, "shots": select_shots, "adapt_lr": best.best_lr,
                "adapt_steps": best.best_steps, "run_id": run_id, "vertical": spec.name, **bundle_tags, **extra_tags,
                "dataset": dataset.name, "data_sha256": fingerprint["sha256"][:12],
                "schema_sha256": dataset.schema_sha256[:12], tracking.IDENTITY_TAG: identity}
        card = partial(model_card, vertical=spec.name, name=name, fingerprint=fingerprint, dataset=dataset,
                       bundle=bundle, default_reason=info["default_reason"], summary=summary, paired=paired,
                       headline=problem.headline, higher_is_better=problem.higher_is_better, shots=select_shots,
                       run_id=run_id, site_statistics=problem.preprocessing.get(SITE_STATISTICS),
                       onboard_args=spec.onboard_args, kept_rounds=kept_rounds(run_id))
        version, alias, reason = tracking.register(model_uri, name, tags, problem.headline, held_value,
                                                   problem.higher_is_better, describe=lambda v: card(version=v))
        mlflow.set_tags({"registered_model": name, "registered_version": version, "alias_decision": reason})
        registered = {"name": name, "version": version, "alias": alias, "reason": reason}
        if not dataset.default and not cfg.tracking.model_name:
            console.print(f"dataset [bold]{dataset.name}[/] is not the {spec.name} vertical's default data: its "
                          f"versions register as {name} with their own @champion (--tracking.model-name to choose)")
    print_closing(summary, paired, choices, problem, bundle, veto or default_reason, registered, select_shots,
                  split_draws(rows))
    console.print(guard_sentence(kept, cfg.eval.guard))
    for line in adapted_trials_sentences(info["adapted_trials_by_shots"], validated=not trial_table.empty,
                                         starts=len(bundle)):
        console.print(line)
    for k, by_steps in choice_at_shots.items():
        disagree = {s: c for s, c in by_steps.items() if c != used_by_steps[s]}
        if disagree:
            console.print(f"[yellow]note:[/] a site with {k} shots cannot be cross-validated and gets the default, but "
                          f"validation supports of {k} shots choose otherwise at " + ", ".join(
                              f"{s} step{'' if s == 1 else 's'} ({c}, not {used_by_steps[s]})" for s, c in disagree.items())
                          + "; `fml onboard --candidate NAME` starts from another candidate")
    return HeldoutReport(summary, paired, selection, best, held_value, model_uri, registered)


def _metric_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. " else "-" for c in name.replace("+", "-"))
