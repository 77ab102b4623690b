"""``fml tune <vertical>``: federated hyperparameter optimization of one FML algorithm with Optuna.

The study searches meta-training's inner lr (log scale), inner steps K and server lr (log scale), and with
``--meta-dropout LOW HIGH`` the support inputs' meta-dropout (``inner.meta_dropout``), and with ``--inner-groups all head
body`` which parameters the inner loop adapts (``inner.group``: ANIL, BOIL). Every trial is a SHORTENED meta-training -- the run's own
``train_one``: same seed, so the same initialization, rounds' clients and episodes, and the same
validation-site check that picks the run's checkpoint -- scored ONLY on the run's validation sites: the
federation is built once per process with the run's seed and its test sites are dropped before the first
trial (:func:`without_test_sites`). A Lightning callback reports each validation to the trial and prunes it
when the pruner says so. A trial's value is its best validation value, the checkpoint a run would keep.

The study lives in Optuna's RDB storage (SQLite under ``$FML_HOME`` by default; a PostgreSQL/MySQL URL lets
several machines run trials of one study), so calling ``fml tune`` again with the same study name continues
it. MLflow gets one parent run per study (in ``fml-<vertical>-tune``) and one nested run per trial (its
settings and validation curve). The first trial of a new study is the hand-set setting, so the study always
measures it. The best COMPLETE trial is written as a preset (:mod:`pipelines.tuned_preset`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import mlflow
import optuna
import pytorch_lightning as pl
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from core import tracking
from core.algorithms.base import get_algorithm
from core.config import (INNER_GROUPS, algorithm_settings, check_algorithm_overrides, check_run_config, flatten,
                         to_plain)
from core.problem import Problem
from core.registry import Registry
from core.tasks import Federation
from core.vertical import VerticalSpec
from pipelines.console import console
from pipelines.run import check_clients_per_round, check_groups_and_recipes, checkpoint_monitor, train_one
from pipelines.tuned_preset import tuned_overrides, tuned_preset_text, write_tuned_preset

#: A pruner from the trials' validation interval: ``factory(val_every) -> pruner``.
PRUNERS: Registry[Callable[[int], optuna.pruners.BasePruner]] = Registry("pruner")
# the median rule from the SECOND validation on: the first check after a few rounds says little
PRUNERS.register("median", lambda val_every: optuna.pruners.MedianPruner(n_startup_trials=2,
                                                                         n_warmup_steps=2 * val_every))
PRUNERS.register("none", lambda val_every: optuna.pruners.NopPruner())


@dataclass
class SearchSpace:
    """Ranges searched, each ``(low, high)`` inclusive."""

    inner_lr: tuple[float, float]
    """Inner-loop step size (log scale)."""
    inner_steps: tuple[int, int]
    """Inner-loop steps K (integers)."""
    server_lr: tuple[float, float]
    """Server learning rate (log scale)."""
    meta_dropout: Optional[tuple[float, float]] = None
    """Meta-dropout of the support inputs (``inner.meta_dropout``, linear scale); None = not searched."""
    inner_groups: Optional[tuple[str, ...]] = None
    """Parameter groups the inner loop may adapt (``inner.group``: ``all``, ``head``, ``body``, ``context``), one
    chosen per trial; None = not searched."""

    @classmethod
    def around(cls, hand_set: dict[str, Any], eval_steps: Sequence[int]) -> "SearchSpace":
        """A decade either side of the hand-set learning rates; K from 1 to the larger of the hand-set K and
        the evaluation's largest steps count (the validation check adapts K steps)."""
        lr, slr, k = hand_set["inner.lr"], hand_set["server.lr"], hand_set["inner.steps"]
        return cls((lr / 10, lr * 10), (1, max(k, *eval_steps, 1)), (slr / 10, slr * 10))

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        params = {"inner.lr": trial.suggest_float("inner.lr", *self.inner_lr, log=True),
                  "inner.steps": trial.suggest_int("inner.steps", *self.inner_steps),
                  "server.lr": trial.suggest_float("server.lr", *self.server_lr, log=True)}
        if self.meta_dropout is not None:
            params["inner.meta_dropout"] = trial.suggest_float("inner.meta_dropout", *self.meta_dropout)
        if self.inner_groups is not None:
            params["inner.group"] = trial.suggest_categorical("inner.group", list(self.inner_groups))
        return params

    def contains(self, params: dict[str, Any]) -> bool:
        ranges = {"inner.lr": self.inner_lr, "inner.steps": self.inner_steps, "server.lr": self.server_lr,
                  **({"inner.meta_dropout": self.meta_dropout} if self.meta_dropout is not None else {})}
        in_groups = self.inner_groups is None or params.get("inner.group") in self.inner_groups
        return in_groups and all(lo <= params[k] <= hi for k, (lo, hi) in ranges.items())

    def check(self) -> None:
        for name, bounds in dataclasses.asdict(self).items():
            if bounds is None:
                continue
            if name == "inner_groups":
                unknown = [g for g in bounds if g not in INNER_GROUPS]
                if not bounds or unknown or len(set(bounds)) != len(bounds):
                    raise ValueError(f"--inner-groups {' '.join(bounds)}: name each group once, from "
                                     f"{', '.join(INNER_GROUPS)}")
                continue
            lo, hi = bounds
            if name == "meta_dropout":
                if not 0 <= lo <= hi < 1:
                    raise ValueError(f"search range meta_dropout ({lo}, {hi}) must read LOW HIGH with "
                                     "0 <= LOW <= HIGH < 1")
                continue
            if not (0 < lo <= hi if name != "inner_steps" else 0 <= lo <= hi):
                raise ValueError(f"search range {name} ({lo}, {hi}) must read LOW HIGH with "
                                 f"{'0 <=' if name == 'inner_steps' else '0 <'} LOW <= HIGH")


@dataclass
class TuneOptions:
    """What ``fml tune`` adds to a run configuration."""

    algorithm: str = "fomaml"
    """The FML algorithm tuned (FedAvg is not: it is the baseline a run compares against)."""
    trials: int = 20
    """Trials this call adds to the study."""
    rounds: Optional[int] = None
    """Rounds of each trial's shortened meta-training (default: a third of the run's fed.rounds)."""
    val_every: Optional[int] = None
    """Rounds between a trial's validation checks (default: the run's, at most a quarter of the rounds)."""
    study_name: Optional[str] = None
    """Optuna study (default: fml-<vertical>-<algorithm>-<preset>)."""
    storage: Optional[str] = None
    """Optuna RDB storage URL (default: sqlite:///$FML_HOME/optuna.db)."""
    output: Optional[str] = None
    """Where the tuned preset is written (default: $FML_HOME/tuned/<study>.yaml)."""
    timeout: Optional[float] = None
    """Seconds after which this call starts no new trial."""
    pruner: str = "median"
    """median (prune below the median of earlier trials at the same round) or none."""
    space: Optional[SearchSpace] = None
    """Ranges searched (default: :meth:`SearchSpace.around` the hand-set settings)."""


@dataclass
class TuneResult:
    study_name: str
    parent_run_id: str
    best_params: dict[str, Any]
    best_value: float
    hand_set_value: Optional[float]
    """The hand-set settings' trial value (None when that trial was pruned or is not in the study)."""
    states: dict[str, int]
    """Trials of the whole study by state (COMPLETE, PRUNED, FAIL, ...)."""
    output: Path


class PruningCallback(pl.Callback):
    """Reports ``monitor`` to an Optuna trial after every validation (step = the federated round) and raises
    ``optuna.TrialPruned`` when the trial should stop. (optuna-integration's callback targets the ``lightning``
    package, not ``pytorch_lightning``.)"""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.curve: dict[int, float] = {}
        """Round -> validation value, every check (non-finite ones too)."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        step, value = int(trainer.global_step), float(value)
        self.curve[step] = value
        if not math.isfinite(value):
            return  # a diverged check is no evidence for the pruner; the trial's value ignores it too
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at round {step} ({self.monitor} {value:.4g})")


def without_test_sites(problem: Problem) -> Problem:
    """A shallow copy of ``problem`` whose federation has no test sites: nothing in tuning can read them."""
    fed = problem.federation
    test = set(fed.roles.get("test", []))
    view = copy.copy(problem)
    view.federation = Federation({sid: site for sid, site in fed.sites.items() if sid not in test},
                                 {role: list(ids) for role, ids in fed.roles.items() if role != "test"})
    return view


def default_storage() -> str:
    return f"sqlite:///{tracking.fml_home() / 'optuna.db'}"


def _hidden_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return url.rpartition("@")[2]  # not a URL SQLAlchemy reads: at least no user:password@


def best_of(curve: dict[int, float], higher_is_better: bool) -> Optional[float]:
    values = [v for v in curve.values() if math.isfinite(v)]
    return (max(values) if higher_is_better else min(values)) if values else None


def trial_config(cfg: Any, algorithm: str, params: dict[str, Any], rounds: int, val_every: int) -> Any:
    """``cfg`` training ``algorithm`` with ``params`` (as its overrides) for the trials' shortened rounds."""
    return dataclasses.replace(cfg, algorithms=[algorithm],
                               fed=dataclasses.replace(cfg.fed, rounds=rounds, val_every=val_every),
                               algorithm_overrides=tuned_overrides(cfg.algorithm_overrides, algorithm, params))


def _check_study(study: optuna.Study, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        have = study.user_attrs.get(key)
        if have is None:
            study.set_user_attr(key, value)
        elif have != value:
            raise ValueError(f"study {study.study_name!r} tunes {key} {have!r}, not {value!r}: "
                             "choose another --study-name")


def _parent_run(study: optuna.Study, experiment_id: str, cfg: Any, options: TuneOptions) -> str:
    """The study's MLflow parent run: the one recorded in the study when this tracking store has it, else new."""
    client = MlflowClient()
    known = study.user_attrs.get("mlflow_parent_run_id")
    if known:
        try:
            if client.get_run(known).info.experiment_id == experiment_id:
                return known
        except mlflow.exceptions.MlflowException:
            pass  # another tracking store: this one gets its own parent run
    run = client.create_run(experiment_id, run_name=study.study_name, tags={"fml.kind": "tune"})
    params = {f"base.{k}": str(v)[:500] for k, v in flatten(to_plain(cfg)).items()}
    params.update({f"tune.{k}": str(v)[:500] for k, v in flatten(dataclasses.asdict(options)).items()})
    items = [Param(key, value) for key, value in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def tune(spec: VerticalSpec, cfg: Any, preset: Optional[str], options: TuneOptions,
         *, pruner: Optional[optuna.pruners.BasePruner] = None) -> TuneResult:
    """Run ``options.trials`` more trials of the study, then write the preset of its best trial.

    Args:
        spec: the vertical.
        cfg: the run config the trials start from (the preset plus run options); its ``fed.rounds`` is the full
            run's, written to the tuned preset; trials run ``options.rounds``.
        preset: the preset ``cfg`` came from (name or ``.yaml`` path), the base of the written preset.
        options: the study's options.
        pruner: overrides ``options.pruner`` (tests).
    """
    # 1. options and the federation (once per process; the test sites dropped before any trial)
    check_run_config(cfg)
    algorithm = options.algorithm
    if not get_algorithm(algorithm).is_meta:
        raise ValueError(f"fml tune tunes an FML algorithm, not {algorithm!r} (the baseline every run trains)")
    if options.trials < 1:
        raise ValueError(f"--trials {options.trials} (must be >= 1)")
    rounds = options.rounds or max(1, cfg.fed.rounds // 3)
    val_every = options.val_every or max(1, min(cfg.fed.val_every, rounds // 4))
    check_run_config(trial_config(cfg, algorithm, {}, rounds, val_every))
    check_algorithm_overrides(trial_config(cfg, algorithm, {}, rounds, val_every), ["fedavg", algorithm])
    settings = algorithm_settings(cfg, algorithm)
    hand_set = {"inner.lr": settings.inner.lr, "inner.steps": settings.inner.steps, "server.lr": settings.server.lr}
    space = options.space or SearchSpace.around(hand_set, cfg.eval.steps)
    space.check()
    if space.inner_groups is not None:
        hand_set["inner.group"] = settings.inner.group
    study_name = options.study_name or f"fml-{spec.name}-{algorithm}-{Path(preset or 'defaults').stem}"
    output = Path(options.output or tracking.fml_home() / "tuned" / f"{study_name}.yaml").expanduser()
    if output.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--output {output}: a preset file ends in .yaml")
    problem = without_test_sites(spec.build(cfg.data, cfg.seed))
    if not problem.federation.role("validation"):
        raise ValueError("fml tune scores trials on validation sites: this federation has none "
                         "(set --data.validation-sites)")
    check_clients_per_round(problem, cfg.fed.clients_per_round)
    for group in space.inner_groups or ():  # on this model, and none that leaves a random model part untrained
        check_groups_and_recipes(problem, trial_config(cfg, algorithm, {"inner.group": group}, rounds, val_every),
                                 [algorithm])
    monitor = checkpoint_monitor(problem, cfg)
    # 2. the study (RDB storage: continued when it exists) and its MLflow parent run
    storage = options.storage or default_storage()
    tracking.fml_home().mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                    direction="maximize" if problem.higher_is_better else "minimize",
                                    pruner=pruner or PRUNERS.get(options.pruner)(val_every))
    except (SQLAlchemyError, ImportError) as err:  # a bad URL, an unreachable server, a missing DB driver
        raise ValueError(f"--storage {_hidden_password(storage)}: {str(err).splitlines()[0]}") from None
    # seeded by the study's size: a continued study does not redraw the trials it already has
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=5, seed=cfg.seed + len(study.trials))
    _check_study(study, {"vertical": spec.name, "algorithm": algorithm, "headline": monitor})
    earlier = len(study.trials)
    if space.contains(hand_set):
        study.enqueue_trial(hand_set, user_attrs={"hand_set": True}, skip_if_exists=True)
    tracking.setup_tracking()
    experiment_id = tracking.ensure_experiment(cfg.tracking.experiment or f"fml-{spec.name}-tune")
    tracking.close_orphaned_runs(experiment_id)
    parent_id = _parent_run(study, experiment_id, cfg, options)
    console.rule(f"[bold]fml tune {spec.name}[/]: study {study_name} ({earlier} trials so far) in "
                 f"{_hidden_password(storage)}")
    console.print(f"{options.trials} trials of {algorithm}, {rounds} rounds each (validation every {val_every}), "
                  f"scored by {monitor} on {len(problem.federation.role('validation'))} validation sites")
    with mlflow.start_run(run_id=parent_id):
        mlflow.set_tags({"vertical": spec.name, "optuna.study": study_name, **tracking.owner_tags()})
        # 3. FedAvg once, when the FML algorithms start from it (warm_start): the run's starting point
        start = None
        if cfg.warm_start:
            console.print("[bold cyan]meta-training fedavg[/] once: warm_start starts every trial from it")
            with tempfile.TemporaryDirectory() as tmp:
                start = train_one(problem, "fedavg", cfg, parent_id, Path(tmp), progress=False).meta_params()
        # 4. the trials
        objective = make_objective(problem, cfg, algorithm, space, rounds, val_every, study_name, experiment_id,
                                   start)
        study.optimize(objective, n_trials=options.trials, timeout=options.timeout, gc_after_trial=False)
        # 5. the best trial -> preset
        result = finish(spec, cfg, preset, study, algorithm, output, parent_id, rounds)
    return result


def _shown(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def make_objective(problem: Problem, cfg: Any, algorithm: str, space: SearchSpace, rounds: int,
                   val_every: int, study_name: str, experiment_id: str, start: Any) -> Callable[[optuna.Trial], float]:
    """The objective: one shortened meta-training in a nested MLflow run of the (active) parent run."""
    monitor = f"val/{problem.headline}"

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        trial_cfg = trial_config(cfg, algorithm, params, rounds, val_every)
        callback = PruningCallback(trial, monitor)
        pruned: Optional[optuna.TrialPruned] = None
        tags = {"optuna.study": study_name, "optuna.trial": str(trial.number),
                "hand_set": str(bool(trial.user_attrs.get("hand_set"))).lower(), **tracking.owner_tags()}
        # the experiment named: a nested fluent run otherwise lands in the active (default) experiment
        with mlflow.start_run(run_name=f"{study_name}-trial{trial.number}", nested=True, tags=tags,
                              experiment_id=experiment_id) as run:
            mlflow.log_params({**params, "algorithm": algorithm, "rounds": rounds, "val_every": val_every})
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    learner = train_one(problem, algorithm, trial_cfg, run.info.run_id, Path(tmp), progress=False,
                                        start=start, callbacks=[callback])
                    if learner.diverged_at is not None:
                        mlflow.set_tag("diverged_round", learner.diverged_at)
                except optuna.TrialPruned as err:
                    pruned = err
            value = best_of(callback.curve, problem.higher_is_better)
            mlflow.set_tag("optuna.state", "PRUNED" if pruned else "COMPLETE" if value is not None else "FAIL")
            if value is not None:
                mlflow.log_metric(f"tune/best_{monitor}", value)
        shown = _shown(params)
        if pruned is not None:
            console.print(f"trial {trial.number}: {shown} -> [yellow]{pruned}[/]")
            raise pruned
        console.print(f"trial {trial.number}: {shown} -> {monitor} "
                      f"{'nan' if value is None else f'{value:.4f}'}")
        return float("nan") if value is None else value  # nan: Optuna records the trial as FAIL

    return objective


def finish(spec: VerticalSpec, cfg: Any, preset: Optional[str], study: optuna.Study, algorithm: str,
           output: Path, parent_id: str, rounds: int) -> TuneResult:
    """Write the best COMPLETE trial as a preset and log the study's outcome to the (active) parent run."""
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    if not states.get("COMPLETE"):
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial yet ({states}); run more trials "
                         "(--pruner none never prunes)")
    best = study.best_trial
    hand = [t for t in trials if t.user_attrs.get("hand_set") and t.state.name == "COMPLETE"]
    hand_value = hand[0].value if hand else None
    monitor = study.user_attrs["headline"]
    header = (f"fml tune {spec.name}: study {study.study_name}, best of {len(trials)} trials ({states}) = trial "
              f"{best.number}\n{monitor} {best.value:.4f} over {rounds}-round trials on validation sites"
              f"{f' (hand-set settings: {hand_value:.4f})' if hand_value is not None else ''}\n"
              f"run it: fml run {spec.name} --preset {output}")
    text = tuned_preset_text(spec, preset, cfg, algorithm, dict(best.params), header)
    write_tuned_preset(output, spec, text)
    mlflow.log_metrics({"tune/trials": len(trials), f"tune/best_{monitor}": float(best.value)})
    if hand_value is not None:
        mlflow.log_metric(f"tune/hand_set_{monitor}", float(hand_value))
    mlflow.set_tags({"tune.best_trial": str(best.number), "tune.output": str(output)})
    mlflow.log_artifact(str(output), "tuned_preset")
    shown = _shown(best.params)
    console.print(f"best: trial {best.number} ({shown}) {monitor} {best.value:.4f}"
                  f"{f' vs hand-set {hand_value:.4f}' if hand_value is not None else ''}; trials {states}")
    console.print(f"wrote [bold]{output}[/]: fml run {spec.name} --preset {output}")
    return TuneResult(study.study_name, parent_id, dict(best.params), float(best.value), hand_value, states, output)


def main(argv: Sequence[str]) -> int:
    """``fml tune <vertical> [tune options] [any fml run option]``."""
    parser = argparse.ArgumentParser(
        prog="fml tune", allow_abbrev=False,
        description="Optuna over one FML algorithm's inner lr, inner steps and server lr (optionally meta-dropout and the "
                    "inner loop's parameter group): each trial a shortened "
                    "meta-training scored on validation sites only, pruned on its validation curve; the best "
                    "settings are written as a preset for `fml run <vertical> --preset PATH`.",
        epilog="Any other option is an `fml run` option (e.g. --seed 1 --fed.clients-per-round 5) and sets the "
               "configuration the trials start from; `fml run <vertical> --help` lists them.")
    parser.add_argument("vertical", help="vertical name (see `fml verticals`)")
    parser.add_argument("--preset", default="quick", help="preset name or .yaml path the trials start from")
    defaults = TuneOptions()
    parser.add_argument("--algorithm", default=defaults.algorithm, help="the FML algorithm tuned")
    parser.add_argument("--trials", type=int, default=defaults.trials, help="trials this call adds to the study")
    parser.add_argument("--rounds", type=int, help="rounds per trial (default: a third of fed.rounds)")
    parser.add_argument("--val-every", type=int, help="rounds between a trial's validation checks")
    parser.add_argument("--study-name", help="Optuna study (default: fml-<vertical>-<algorithm>-<preset>)")
    parser.add_argument("--storage", help="Optuna RDB storage URL (default: sqlite:///$FML_HOME/optuna.db)")
    parser.add_argument("--output", help="tuned preset file (default: $FML_HOME/tuned/<study>.yaml)")
    parser.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    parser.add_argument("--pruner", default=defaults.pruner, choices=PRUNERS.names(),
                        help="median: stop a trial below the median of earlier ones at the same round")
    parser.add_argument("--inner-lr", type=float, nargs=2, metavar=("LOW", "HIGH"), help="inner lr range (log)")
    parser.add_argument("--inner-steps", type=int, nargs=2, metavar=("LOW", "HIGH"), help="inner steps range")
    parser.add_argument("--server-lr", type=float, nargs=2, metavar=("LOW", "HIGH"), help="server lr range (log)")
    parser.add_argument("--meta-dropout", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="also search inner.meta_dropout in this range (row-data verticals)")
    parser.add_argument("--inner-groups", nargs="+", metavar="GROUP",
                        help=f"also search which parameters the inner loop adapts (inner.group) among these: "
                             f"{', '.join(INNER_GROUPS)} (head = ANIL, body = BOIL)")
    args, rest = parser.parse_known_args(argv)
    if any(a == "--algorithms" or a.startswith("--algorithms=") for a in rest):
        parser.error("--algorithms: fml tune tunes one algorithm, named by --algorithm")
    import verticals
    from core.vertical import VERTICALS
    from pipelines.config import resolve_run_config

    verticals.load_all()
    spec = VERTICALS.get(args.vertical)
    cfg = resolve_run_config(spec, args.preset, rest, prog=f"fml tune {spec.name} --preset {args.preset}")
    space = None
    if args.inner_lr or args.inner_steps or args.server_lr or args.meta_dropout or args.inner_groups:
        settings = algorithm_settings(cfg, args.algorithm)
        around = SearchSpace.around({"inner.lr": settings.inner.lr, "inner.steps": settings.inner.steps,
                                     "server.lr": settings.server.lr}, cfg.eval.steps)
        space = SearchSpace(tuple(args.inner_lr or around.inner_lr), tuple(args.inner_steps or around.inner_steps),
                            tuple(args.server_lr or around.server_lr),
                            tuple(args.meta_dropout) if args.meta_dropout else None,
                            tuple(args.inner_groups) if args.inner_groups else None)
    options = TuneOptions(algorithm=args.algorithm, trials=args.trials, rounds=args.rounds, val_every=args.val_every,
                          study_name=args.study_name, storage=args.storage, output=args.output, timeout=args.timeout,
                          pruner=args.pruner, space=space)
    tune(spec, cfg, args.preset, options)
    return 0
