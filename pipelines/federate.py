"""``fml federate``: the FML round on Flower, across real machines or in Flower's simulation engine.

    fml federate superlink [--address 0.0.0.0] [--certificates DIR | --insecure]
    fml federate supernode --site SITE [--superlink HOST:9092] [--data PATH] [--mode federation|site] ...
    fml federate run <vertical> [--superlink HOST:9093] [--preset quick] [--algorithm fomaml] [--set K=V ...]
    fml federate simulate <vertical> [--nodes N] [--preset quick] [--algorithm fomaml] [--set K=V ...]
    fml federate app                      where the Flower app (pyproject [tool.flwr.app]) lives

The Flower app is ``pipelines/flwr_app/pyproject.toml`` (ServerApp ``pipelines.flower_app:server``,
ClientApp ``pipelines.flower_app:client``). Its run config is a flat table: ``vertical``, ``preset``,
``algorithm``, any ``RunConfig`` option by its dotted name (``fed.rounds``, ``inner.lr``,
``data.train_sites`` ...) and ``flower.<option>`` (``core.federation.settings.FlowerSettings``).

This module is imported by every ClientApp process: heavy imports stay inside functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from core.federation.node import LoadedSite, NodeConfigError, NodeRequest, simulation_site_order
from core.federation.settings import FederatedRun, FlowerSettings

APP_DIR = Path(__file__).parent / "flwr_app"
REPO_ROOT = Path(__file__).resolve().parent.parent
RESERVED = ("vertical", "preset", "algorithm", "experiment", "run-name", "run_name")


# --------------------------------------------------------------------------------------------- node side
def vertical_spec(name: str):
    """The registered vertical ``name``, importing only its package (fast ClientApp start)."""
    import importlib

    from core.vertical import VERTICALS

    if name not in VERTICALS:
        try:
            importlib.import_module(f"verticals.{name}")
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith(f"verticals.{name}"):
                raise
            import verticals

            verticals.load_all()
    return VERTICALS.get(name)


def data_config(spec: Any, overrides: Mapping[str, Any]) -> Any:
    """The vertical's typed data config with ``overrides`` (unknown fields are errors naming the choices)."""
    from omegaconf import OmegaConf

    fields = {f.name for f in dataclasses.fields(spec.data_config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown data option(s) {unknown} for vertical {spec.name!r}; options: {sorted(fields)}")
    merged = OmegaConf.merge(OmegaConf.structured(spec.data_config), OmegaConf.create(dict(overrides)))
    return OmegaConf.to_object(merged)


_PREPARED: dict[tuple, Any] = {}


def _prepared(spec: Any, cfg: Any, *key: Any) -> Any:
    """``spec.prepare`` once per (vertical, data options, path, seed) in this process: a simulation actor
    serves many sites of the same federation."""
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = spec.prepare(cfg, key[-1])
    return _PREPARED[key]


def load_site(request: NodeRequest) -> LoadedSite:
    """Read the node's site through its vertical (``spec.prepare`` or ``spec.load_new_site``)."""
    from core.federation.records import data_from_config
    from core.tasks import SiteDataError

    spec = vertical_spec(request.vertical)
    overrides = data_from_config(request.data_json)
    if request.data_path:
        if "path" not in {f.name for f in dataclasses.fields(spec.data_config)}:
            raise NodeConfigError(f"vertical {spec.name!r} reads no data path; drop 'data-path' from the node config")
        overrides["path"] = request.data_path
    cfg = data_config(spec, overrides)
    if request.mode == "site":
        preprocessing = {}
        if request.preprocessing_path:
            preprocessing = json.loads(Path(request.preprocessing_path).read_text())
        problem, site = spec.load_new_site(cfg, preprocessing, request.site_id)
        return LoadedSite(problem, site, request.role or "train", -1)
    problem = _prepared(spec, cfg, request.vertical, request.data_json, request.data_path, request.seed)
    federation = problem.federation
    site_id = request.site_id
    if site_id is None:  # simulation: the partition-id-th site
        order = simulation_site_order(federation)
        if not 0 <= int(request.partition_id or 0) < len(order):
            raise NodeConfigError(f"partition-id {request.partition_id} but the {spec.name} federation has "
                                  f"{len(order)} sites; run the simulation with at most {len(order)} nodes")
        site_id = order[int(request.partition_id or 0)]
    if site_id not in federation.sites:
        known = sorted(federation.sites)
        raise SiteDataError(f"node config site-id {site_id!r} is not a site of the {spec.name} federation "
                            f"(e.g. {', '.join(known[:5])}{' ...' if len(known) > 5 else ''})")
    role = federation.role_of(site_id)
    train_ids = problem.train_site_ids()
    return LoadedSite(problem, federation.sites[site_id], role, train_ids.index(site_id) if role == "train" else -1)


# --------------------------------------------------------------------------------------------- server side
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
    """
    import mlflow
    import torch

    from core import tracking
    from core.config import to_plain
    from core.evaluation import Method, evaluate_sites, paired_differences, select_adaptation, summarize

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
    if not selection.empty:
        mlflow.log_table(selection, "adaptation_selection.json")
    mlflow.log_table(summary, "evaluation_summary.json")
    if not paired.empty:
        mlflow.log_table(paired, "paired_differences.json")
    cells = summary[(summary["site"] == "ALL") & (summary["metric"] == problem.headline)]
    for _, r in cells.iterrows():
        mlflow.log_metric(f"test/{problem.headline}/{r['method']}/shots{r['shots']}_steps{r['steps']}", r["mean"])
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


# --------------------------------------------------------------------------------------------- deployment CLI
def flower_bin(name: str) -> str:
    """Path of a Flower executable (next to this Python first, then PATH)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; install flwr")
    return found


def _tls_args(args: argparse.Namespace, server: bool) -> list[str]:
    if args.insecure:
        return ["--insecure"]
    if not args.certificates:
        raise ValueError("give --certificates DIR (ca.crt, server.pem, server.key) or --insecure for a local test")
    d = Path(args.certificates)
    if server:
        return ["--ssl-ca-certfile", str(d / "ca.crt"), "--ssl-certfile", str(d / "server.pem"),
                "--ssl-keyfile", str(d / "server.key")]
    return ["--root-certificates", str(d / "ca.crt")]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def superlink_command(address: str, tls: list[str], database: Optional[str] = None,
                      ports: tuple[int, int, int] = (9091, 9092, 9093)) -> list[str]:
    serverappio, fleet, control = ports
    cmd = [flower_bin("flower-superlink"), *tls, "--fleet-api-address", f"{address}:{fleet}",
           "--serverappio-api-address", f"127.0.0.1:{serverappio}", "--control-api-address", f"{address}:{control}",
           "--disable-runtime-dependency-installation"]
    return cmd + (["--database", database] if database else [])


def supernode_command(superlink: str, site: str, tls: list[str], clientappio: str, data: Optional[str] = None,
                      mode: Optional[str] = None, vertical: Optional[str] = None, role: Optional[str] = None,
                      cache_dir: Optional[str] = None, extra_config: Sequence[str] = ()) -> list[str]:
    config = [f"site-id={json.dumps(site)}"]
    for key, value in (("data-path", data), ("mode", mode), ("vertical", vertical), ("role", role),
                       ("cache-dir", cache_dir)):
        if value:
            config.append(f"{key}={json.dumps(value)}")
    config += list(extra_config)
    return [flower_bin("flower-supernode"), *tls, "--superlink", superlink, "--clientappio-api-address", clientappio,
            "--node-config", " ".join(config)]


def run_config_items(vertical: str, preset: Optional[str], algorithm: Optional[str], sets: Sequence[str]) -> dict:
    """The run-config overrides of ``fml federate run`` (``--set KEY=VALUE`` values parsed as YAML)."""
    import yaml

    items: dict[str, Any] = {"vertical": vertical}
    if preset:
        items["preset"] = preset
    if algorithm:
        items["algorithm"] = algorithm
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep:
            raise ValueError(f"--set {s!r}: expected KEY=VALUE")
        parsed = yaml.safe_load(value)
        items[key] = json.dumps(parsed) if isinstance(parsed, (dict, list)) else parsed
    return items


def write_run_config(items: Mapping[str, Any], path: Path) -> Path:
    """A TOML file of run-config overrides for ``flwr run --run-config FILE`` (dotted keys kept whole)."""
    lines = []
    for key, value in items.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, Mapping):
            text = json.dumps(json.dumps(dict(value)))
        else:
            text = json.dumps(str(value))
        lines.append(f"{json.dumps(key)} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


def flower_home(superlink: str, insecure: bool, root_certificates: Optional[str], home: Optional[str] = None) -> str:
    """A ``FLWR_HOME`` (default: a new temporary folder) whose default SuperLink connection ``fml`` is
    ``superlink`` (its Control API)."""
    home = home or tempfile.mkdtemp(prefix="fml-flwr-home-")
    Path(home).mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", 'default = "fml"', "", "[superlink.fml]", f"address = {json.dumps(superlink)}"]
    lines.append("insecure = true" if insecure else f"root-certificates = {json.dumps(root_certificates)}")
    Path(home, "config.toml").write_text("\n".join(lines) + "\n")
    return home


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fml federate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("superlink", help="start a Flower SuperLink (the coordinator's rendezvous)")
    p.add_argument("--address", default="0.0.0.0", help="interface of the Fleet and Control APIs")
    p.add_argument("--ports", default="9091,9092,9093", help="ServerAppIo,Fleet,Control ports")
    p.add_argument("--database", help="SQLite file for the SuperLink state (default: in memory)")
    p.add_argument("--certificates", help="folder with ca.crt, server.pem, server.key (TLS)")
    p.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    p = sub.add_parser("supernode", help="start a Flower SuperNode serving one site")
    p.add_argument("--site", required=True, help="site id this node serves")
    p.add_argument("--superlink", default="127.0.0.1:9092", help="SuperLink Fleet API HOST:PORT")
    p.add_argument("--data", help="the site's data file/folder (sets the vertical's path option)")
    p.add_argument("--mode", choices=["federation", "site"], help="federation (default) or site (own data only)")
    p.add_argument("--vertical", help="refuse runs of any other vertical")
    p.add_argument("--role", help="role of the site in site mode (default train)")
    p.add_argument("--clientappio", default="127.0.0.1:9094", help="local ClientAppIo address (one per node)")
    p.add_argument("--cache-dir", help="keep the prepared site here between messages (default: "
                                       "$FML_HOME/node-cache/<site>; 'none' disables)")
    p.add_argument("--certificates", help="folder with ca.crt (the SuperLink's CA)")
    p.add_argument("--insecure", action="store_true")
    for name, helptext in (("run", "launch a federated run on a SuperLink"),
                           ("simulate", "run the federation in Flower's simulation engine")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("vertical")
        p.add_argument("--preset", default="quick")
        p.add_argument("--algorithm")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="run option, e.g. fed.rounds=20, flower.secagg=true (repeatable)")
        if name == "run":
            p.add_argument("--superlink", default="127.0.0.1:9093", help="SuperLink Control API HOST:PORT")
            p.add_argument("--certificates", help="folder with ca.crt")
            p.add_argument("--insecure", action="store_true")
            p.add_argument("--no-stream", action="store_true", help="return once the run is submitted")
        else:
            p.add_argument("--nodes", type=int, help="simulated nodes (default: training + validation sites)")
    sub.add_parser("app", help="print the Flower app folder and its [tool.flwr.app] section")
    args = parser.parse_args(list(argv))

    if args.command == "app":
        print(APP_DIR)
        print((APP_DIR / "pyproject.toml").read_text())
        return 0
    if args.command == "superlink":
        ports = tuple(int(x) for x in args.ports.split(","))
        return subprocess.call(superlink_command(args.address, _tls_args(args, True), args.database, ports), env=_env())
    if args.command == "supernode":
        cache = args.cache_dir or str(Path(os.environ.get("FML_HOME", Path.home() / ".fml")).expanduser()
                                      / "node-cache" / args.site)
        return subprocess.call(supernode_command(args.superlink, args.site, _tls_args(args, False), args.clientappio,
                                                 args.data, args.mode, args.vertical, args.role,
                                                 None if cache == "none" else cache), env=_env())
    if args.command == "run":
        env = _env()
        env["FLWR_HOME"] = flower_home(args.superlink, args.insecure,
                                       str(Path(args.certificates) / "ca.crt") if args.certificates else None)
        overrides = write_run_config(run_config_items(args.vertical, args.preset, args.algorithm, args.set),
                                     Path(env["FLWR_HOME"]) / "run-config.toml")
        cmd = [flower_bin("flwr"), "run", str(APP_DIR), "fml", "--run-config", str(overrides)]
        return subprocess.call(cmd + ([] if args.no_stream else ["--stream"]), env=env)
    config: dict[str, Any] = {"vertical": args.vertical, "preset": args.preset}
    if args.algorithm:
        config["algorithm"] = args.algorithm
    config.update(run_config_items(args.vertical, args.preset, args.algorithm, args.set))
    result = simulate(config, num_nodes=args.nodes)
    last = result.rounds[-1].metrics if result.rounds else {}
    print(json.dumps({"rounds": len(result.rounds), "mlflow_run_id": result.mlflow_run_id,
                      "last_round": last, "evaluation": result.evaluations.get(len(result.rounds), {}),
                      "registered": (result.finish or {}).get("registered")}, default=str))
    return 0


if __name__ == "__main__":  # ``python -m pipelines.federate ...`` (= ``fml federate ...``)
    sys.exit(main(sys.argv[1:]))
