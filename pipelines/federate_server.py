"""The server side of ``fml federate``: the run config -> ``FederatedRun``, the finish hook (the held-out
protocol and registration of ``fml run``), and runs on Flower's simulation engine."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from core.federation.settings import FederatedRun
from pipelines.federate_node import load_site, vertical_spec

if TYPE_CHECKING:
    from core.federation.selection import RoundSelection

REPO_ROOT = Path(__file__).resolve().parent.parent
RESERVED = ("vertical", "preset", "algorithm", "experiment", "run-name", "run_name")


def _json_object(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(str(value))
    except json.JSONDecodeError as err:
        raise ValueError(f"run config {key!r} must be a JSON object, e.g. '{{\"train_sites\": 20}}': {err}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"run config {key!r} must be a JSON object, got {value!r}")
    return parsed


def resolve_run(config: Mapping[str, Any]) -> FederatedRun:
    """A flat Flower run config -> ``FederatedRun`` (vertical preset <- overrides, typed and validated)."""
    from core.config import algorithm_settings, check_algorithm_overrides, from_flat, to_plain
    from pipelines.config import ConfigError, load_preset
    from pipelines.run import check_group_trains_the_rest

    if "vertical" not in config:
        raise ConfigError("the run config needs 'vertical' (e.g. flwr run ... --run-config \"vertical='digits'\")")
    config = {k: v for k, v in config.items() if v != ""}  # "" = not set (Flower run configs need every key)
    spec = vertical_spec(str(config["vertical"]))
    preset = str(config.get("preset") or "") or None
    options = {k: v for k, v in config.items() if k not in RESERVED and k not in ("data", "options")}
    for key in ("data", "options"):
        if key in config:
            extra = _json_object(config[key], key)
            options.update({(f"data.{k}" if key == "data" else k): v for k, v in extra.items()})
    try:
        cfg = from_flat(load_preset(spec, preset), options)  # flower.<field> keys fill cfg.flower
    except ValueError as err:
        raise ConfigError(f"run config: {err}") from None
    algorithm = str(config.get("algorithm") or next((a for a in cfg.algorithms if a != "fedavg"), "fedavg"))
    try:
        check_algorithm_overrides(cfg, list(dict.fromkeys(["fedavg", *cfg.algorithms, algorithm])))
        settings = algorithm_settings(cfg, algorithm)
        # a Flower run starts from the seeded initialization (no warm start)
        check_group_trains_the_rest(algorithm, settings.inner.group, warm_start=False)
    except ValueError as err:
        raise ConfigError(f"run config: {err}") from None
    flower = cfg.flower
    if cfg.fed.dp_clip > 0 and flower.strategy != "core":
        raise ConfigError("fed.dp_clip (DP-FedAvg) needs flower.strategy=core (the server clips each update, or "
                          "with flower.secagg each site clips its own); with a Flower strategy use flower.dp_noise "
                          "and flower.dp_clip")
    from core.federation.secure_dp import check_secure_dp

    try:  # with flower.secagg the sites clip: the clip must fit SecAgg+'s quantization range
        check_secure_dp(cfg.fed, flower)
    except ValueError as err:
        raise ConfigError(f"run config: {err}") from None
    from core.sampling import NEEDS_STRATA

    if cfg.fed.sampler in NEEDS_STRATA:
        raise ConfigError(f"fed.sampler={cfg.fed.sampler} runs in-process only (fml run / fml evaluate): Flower nodes "
                          "do not report site descriptors yet; use uniform or size")
    if cfg.fed.weighting == "quality" and (flower.secagg or flower.strategy != "core"):
        raise ConfigError("fed.weighting=quality weighs each site by its reported losses: it needs "
                          "flower.strategy=core without flower.secagg")
    seed = int(cfg.seed)
    return FederatedRun(
        vertical=spec.name, data=to_plain(cfg.data), seed=seed, algorithm=algorithm, inner=settings.inner,
        fed=settings.fed,
        server=settings.server, flower=flower,
        experiment=str(config.get("experiment") or cfg.tracking.experiment or f"fml-{spec.name}"),
        run_name=str(config.get("run-name") or config.get("run_name") or f"{spec.name}-{algorithm}-seed{seed}-flower"),
        extra=cfg, average_last=int(cfg.eval.checkpoint_average),
    )


#: The problem the coordinator last built: round selection (before round 1) and the finish hook read the same
#: validation and held-out sites, so a run builds its data once. One entry: a ServerApp process serves one run.
_COORDINATOR_PROBLEM: dict[str, Any] = {}


def coordinator_problem(run: FederatedRun) -> Any:
    """The run's problem as ``fml run`` builds it (``spec.build(cfg.data, cfg.seed)``), built once per data and
    seed on the coordinator."""
    cfg = run.extra
    key = json.dumps([run.vertical, run.data, int(cfg.seed)], sort_keys=True, default=str)
    if key not in _COORDINATOR_PROBLEM:
        _COORDINATOR_PROBLEM.clear()
        _COORDINATOR_PROBLEM[key] = vertical_spec(run.vertical).build(cfg.data, cfg.seed)
    return _COORDINATOR_PROBLEM[key]


def round_selection(run: FederatedRun) -> Optional[RoundSelection]:
    """``fml run``'s round selection for a Flower run, on the coordinator: the validation sites read through the
    vertical (as the finish hook reads the held-out sites), validated with the same draws, shots, steps and
    metric as ``pipelines.run.train_one``; None when the federation has no validation sites."""
    from core.federation.selection import RoundSelection
    from pipelines.run import checkpoint_monitor, round_validation

    cfg = run.extra
    problem = coordinator_problem(run)
    validate = round_validation(problem, cfg, run.inner)
    if validate is None:
        return None
    model = problem.make_model()
    metric = checkpoint_monitor(problem, cfg).removeprefix("val/")
    return RoundSelection(lambda meta: validate(model, meta), metric, problem.higher_is_better,
                          patience=int(run.fed.early_stopping_patience))


def privacy_spent(run: FederatedRun, result: Any, num_train_sites: int) -> dict[str, float]:
    """Site-level epsilon of the federated meta-init, as ``fml run`` reports it (``core.privacy.run_epsilon``):
    every applied round spends privacy (a skipped round released nothing); empty without DP noise. The same
    whether the server clipped (core rule) or the sites did (SecAgg+): the released mechanism is the same."""
    from core.privacy import run_epsilon

    if run.fed.dp_noise <= 0:
        return {}
    rounds = sum(1 for r in result.rounds if r.applied)
    return {run.algorithm: run_epsilon(run.fed, num_train_sites, rounds)}


def finish_federated_run(run: FederatedRun, result: Any, tracker: Any) -> Optional[dict[str, Any]]:
    """After the last round, inside the run's MLflow run: the held-out protocol of ``fml run``
    (``pipelines.run.evaluate_and_register``) for ``local`` and the federated meta-init -- ``fedavg`` and
    ``fedavg+ft`` when the federated algorithm is FedAvg -- then the meta-init logged with its
    preprocessing and registered as ``fml-<vertical>``. The held-out sites are read on the ServerApp's
    machine through the vertical (``spec.prepare``)."""
    import mlflow
    import torch

    from core.evaluation import Method
    from core.federation.secure_dp import privacy_mode
    from pipelines.run import algorithm_recipe, dataset_fingerprint, environment_info, evaluate_and_register

    cfg = run.extra
    spec = vertical_spec(run.vertical)
    problem = coordinator_problem(run)
    model = problem.make_model()
    torch.manual_seed(cfg.seed + 1)
    local_init = {k: v.detach() for k, v in problem.make_model().named_parameters()}
    meta = {k: v.detach() for k, v in result.meta.items()}
    methods = [Method("local", local_init, trained_lr=cfg.inner.lr)]
    if run.algorithm == "fedavg":
        methods += [Method("fedavg", meta, adapts=False),
                    Method("fedavg+ft", meta, trained_lr=run.inner.lr, inner=run.inner)]
    else:
        methods += [Method(run.algorithm, meta, trained_lr=run.inner.lr, inner=run.inner,
                           recipes=(algorithm_recipe(run.algorithm, run.inner.group),))]
    mlflow.log_dict(dataset_fingerprint(problem), "dataset_fingerprint.json")
    mlflow.set_tags({f"env.{k}": v for k, v in environment_info().items()})
    privacy = privacy_spent(run, result, len(problem.train_site_ids()))
    mlflow.set_tags({f"{run.algorithm}.kept_rounds": ", ".join(map(str, result.kept_rounds)),  # as fml run's train_one
                     f"{run.algorithm}.kept_by": result.kept_by})
    tags = {"engine": "flower", "fed_privacy": privacy_mode(cfg.fed, run.flower)}
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate_and_register(spec, problem, cfg, model, methods, candidates=[methods[-1].name],
                                       run_id=tracker.run_id, out=Path(tmp), progress=False,
                                       extra_tags=tags, privacy=privacy)
    return {"model_uri": report.model_uri, "registered": report.registered, "heldout": report.heldout_value,
            "summary": report.summary}


# --------------------------------------------------------------------------------------------- simulation
def simulation_nodes(run: FederatedRun) -> int:
    """Simulated nodes: every training and validation site of the federation."""
    problem = coordinator_problem(run)  # the ServerApp of this simulation reuses it
    return len(problem.federation.roles["train"]) + len(problem.federation.roles["validation"])


def simulate(config: Mapping[str, Any], num_nodes: Optional[int] = None, cpus_per_node: float = 1.0,
             finish: bool = True) -> Any:
    """Run the federated run ``config`` on Flower's simulation engine (Ray); returns the ``DriverResult``."""
    import logging

    from flwr.simulation import run_simulation

    from core.federation.client import make_client_app
    from core.federation.server import make_server_app

    run = resolve_run(config)
    root = str(REPO_ROOT)
    if root not in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # Ray workers import core/pipelines
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    results: list = []
    server = make_server_app(lambda ctx: run, finish_federated_run if finish else None, mode="simulation",
                             results=results, select=round_selection)
    client = make_client_app(load_site)
    nodes = num_nodes or simulation_nodes(run)
    backend = {"client_resources": {"num_cpus": cpus_per_node, "num_gpus": 0.0},
               "init_args": {"include_dashboard": False, "logging_level": logging.ERROR}}
    run_simulation(server_app=server, client_app=client, num_supernodes=nodes, backend_config=backend)
    if not results:
        raise RuntimeError("the simulated federation finished without a result; see the log above")
    return results[0]
