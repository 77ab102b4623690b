"""The server side of ``fml federate``: the run config -> ``FederatedRun``, the finish hook (the held-out
protocol and registration of ``fml run``), and runs on Flower's simulation engine."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from core.federation.settings import FederatedRun, FlowerSettings
from pipelines.federate_node import data_config, load_site, vertical_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
RESERVED = ("vertical", "preset", "algorithm", "experiment", "run-name", "run_name")


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.replace("-", "_").split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


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
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from core.algorithms.base import get_algorithm
    from core.config import to_plain
    from pipelines.config import ConfigError, load_preset

    if "vertical" not in config:
        raise ConfigError("the run config needs 'vertical' (e.g. flwr run ... --run-config \"vertical='digits'\")")
    config = {k: v for k, v in config.items() if v != ""}  # "" = not set (Flower run configs need every key)
    spec = vertical_spec(str(config["vertical"]))
    preset = str(config.get("preset") or "") or None
    options = {k: v for k, v in config.items()
               if k not in RESERVED and k not in ("data", "options") and not k.startswith("flower.")}
    for key in ("data", "options"):
        if key in config:
            extra = _json_object(config[key], key)
            options.update({(f"data.{k}" if key == "data" else k): v for k, v in extra.items()})
    base = OmegaConf.structured(load_preset(spec, preset))
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.create(_nest(options))))
    except OmegaConfBaseException as err:
        raise ConfigError(f"run config: {str(err).splitlines()[0]}") from None
    algorithm = str(config.get("algorithm") or next((a for a in cfg.algorithms if a != "fedavg"), "fedavg"))
    is_meta = get_algorithm(algorithm).is_meta
    flower = FlowerSettings.from_flat(config)
    seed = int(cfg.seed)
    return FederatedRun(
        vertical=spec.name, data=to_plain(cfg.data), seed=seed, algorithm=algorithm, inner=cfg.inner, fed=cfg.fed,
        server=cfg.server if is_meta else cfg.baseline_server, flower=flower,
        experiment=str(config.get("experiment") or cfg.tracking.experiment or f"fml-{spec.name}"),
        run_name=str(config.get("run-name") or config.get("run_name") or f"{spec.name}-{algorithm}-seed{seed}-flower"),
        extra=cfg,
    )


def finish_federated_run(run: FederatedRun, result: Any, tracker: Any) -> Optional[dict[str, Any]]:
    """After the last round, inside the run's MLflow run: the held-out protocol of ``fml run`` (adaptation
    settings chosen on validation sites, test sites scored over the shots x steps grid for ``local`` and the
    federated meta-init -- plus ``fedavg``/``fedavg+ft`` when the federated algorithm is FedAvg), tables,
    the meta-init logged with its preprocessing, and registration as ``fml-<vertical>``.

    The held-out sites are read on the ServerApp's machine through the vertical (``spec.prepare``).
    It mirrors stages 4-7 of ``pipelines.run.run_pipeline`` with the same core functions; once those stages
    are one shared function, this hook should call it.
    """
    import mlflow
    import torch

    from core import tracking
    from core.config import to_plain
    from core.evaluation import Method, evaluate_sites, paired_differences, select_adaptation, summarize
    from core.plots import plot_vs_shots, plot_vs_steps
    from pipelines.run import _metric_safe, dataset_fingerprint, environment_info

    cfg = run.extra
    spec = vertical_spec(run.vertical)
    problem = spec.prepare(cfg.data, cfg.seed)
    model = problem.make_model()
    torch.manual_seed(cfg.seed + 1)
    local_init = {k: v.detach() for k, v in problem.make_model().named_parameters()}
    meta = {k: v.detach() for k, v in result.meta.items()}
    methods = [Method("local", local_init, trained_lr=cfg.inner.lr)]
    if run.algorithm == "fedavg":
        methods += [Method("fedavg", meta, adapts=False), Method("fedavg+ft", meta, trained_lr=cfg.inner.lr)]
    else:
        methods += [Method(run.algorithm, meta, trained_lr=cfg.inner.lr)]
    select_shots = cfg.eval.select_shots or sorted(cfg.eval.shots)[len(cfg.eval.shots) // 2]
    val_sites = problem.federation.role("validation") or problem.federation.role("train")[:5]
    selection = select_adaptation(problem, model, methods, val_sites, shots=select_shots, steps_grid=cfg.eval.steps,
                                  lr_grid=cfg.eval.lr_grid, draws=cfg.eval.select_draws, seed=cfg.seed, inner=cfg.inner)
    rows = evaluate_sites(problem, model, methods, problem.federation.role("test"), shots_grid=cfg.eval.shots,
                          steps_grid=cfg.eval.steps, draws=cfg.eval.draws, seed=cfg.seed, inner=cfg.inner)
    summary = summarize(rows)
    paired = paired_differences(rows, problem.headline)
    mlflow.log_dict(dataset_fingerprint(problem), "dataset_fingerprint.json")
    mlflow.set_tags({f"env.{k}": v for k, v in environment_info().items()})
    if not selection.empty:
        mlflow.log_table(selection, "adaptation_selection.json")
    mlflow.log_table(summary, "evaluation_summary.json")
    if not paired.empty:
        mlflow.log_table(paired, "paired_differences.json")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        summary.to_csv(out / "evaluation_summary.csv", index=False)
        plots = [plot_vs_steps(summary, problem.headline, out / "adaptation_vs_steps.png"),
                 plot_vs_shots(summary, problem.headline, max(cfg.eval.steps), out / "adaptation_vs_shots.png")]
        for f in [out / "evaluation_summary.csv", *plots]:
            mlflow.log_artifact(str(f), "evaluation")
    cells = summary[(summary["site"] == "ALL") & (summary["metric"] == problem.headline)]
    mlflow.log_metrics({f"test/{problem.headline}/{_metric_safe(r['method'])}/shots{r['shots']}_steps{r['steps']}":
                        float(r["mean"]) for _, r in cells.iterrows()})  # '+' (fedavg+ft) is not a valid key
    best = methods[-1]
    held = cells[(cells["method"] == best.name) & (cells["shots"] == select_shots) & (cells["steps"] == best.best_steps)]
    held_value = float(held["mean"].iloc[0]) if not held.empty else float("nan")
    name = "fedavg" if run.algorithm == "fedavg" else run.algorithm
    info = {"vertical": spec.name, "algorithm": name, "adapt_lr": best.best_lr, "adapt_steps": best.best_steps,
            "shots": select_shots, "headline": problem.headline, "higher_is_better": problem.higher_is_better,
            "heldout_value": held_value, "inner": to_plain(cfg.inner), "preprocessing": problem.preprocessing,
            "run_id": tracker.run_id, "data": to_plain(cfg.data), "engine": "flower"}
    model_uri = tracking.log_meta_init(model, meta, info, problem.input_example())
    mlflow.set_tags({"best_algorithm": name, "meta_init_uri": model_uri})
    registered = None
    if cfg.tracking.register:
        model_name = cfg.tracking.model_name or f"fml-{spec.name}"
        tags = {"algorithm": name, "shots": select_shots, "adapt_lr": best.best_lr, "adapt_steps": best.best_steps,
                "run_id": tracker.run_id, "vertical": spec.name, "engine": "flower"}
        version, alias, reason = tracking.register(model_uri, model_name, tags, problem.headline, held_value,
                                                   problem.higher_is_better)
        mlflow.set_tags({"registered_model": model_name, "registered_version": version, "alias_decision": reason})
        registered = {"name": model_name, "version": version, "alias": alias, "reason": reason}
    return {"model_uri": model_uri, "registered": registered, "heldout": held_value, "summary": summary}


# --------------------------------------------------------------------------------------------- simulation
def simulation_nodes(run: FederatedRun) -> int:
    """Simulated nodes: every training and validation site of the federation."""
    spec = vertical_spec(run.vertical)
    problem = spec.prepare(data_config(spec, run.data), run.seed)
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
                             results=results)
    client = make_client_app(load_site)
    nodes = num_nodes or simulation_nodes(run)
    backend = {"client_resources": {"num_cpus": cpus_per_node, "num_gpus": 0.0},
               "init_args": {"include_dashboard": False, "logging_level": logging.ERROR}}
    run_simulation(server_app=server, client_app=client, num_supernodes=nodes, backend_config=backend)
    if not results:
        raise RuntimeError("the simulated federation finished without a result; see the log above")
    return results[0]
