"""``fml federate``: the FML round on Flower, across real machines or in Flower's simulation engine.

    fml federate superlink [--address 127.0.0.1] [--port 9092] [--certificates DIR | --insecure]
                           [--supernode-keys sites.yaml]     SuperNode authentication (needs TLS)
    fml federate supernode --site SITE [--superlink HOST:9092] [--data PATH] [--isolation process]
                           [--private-key keys/SITE.key] ...
    fml federate keys --site SITE --out DIR   a site's key pair for SuperNode authentication
    fml federate run <vertical> [--superlink HOST:9092] [--preset quick] [--algorithm fomaml] [--set K=V ...]
    fml federate simulate <vertical> [--nodes N] [--preset quick] [--algorithm fomaml] [--set K=V ...]
    fml federate app                      where the Flower app (pyproject [tool.flwr.app]) lives

The Flower app is ``pipelines/flwr_app/pyproject.toml`` (ServerApp ``pipelines.flower_app:server``,
ClientApp ``pipelines.flower_app:client``). Its run config is a flat table: ``vertical``, ``preset``,
``algorithm``, any ``RunConfig`` option by its dotted name (``fed.rounds``, ``inner.lr``,
``data.train_sites`` ...) and ``flower.<option>`` (``RunConfig.flower``: ``core.federation.settings.FlowerSettings``);
its ``[tool.flwr.app.config]`` table declares the keys, the defaults live in these dataclasses.

Node side: ``pipelines.federate_node``; how a node runs its ClientApp (``--isolation``):
``pipelines.federate_isolation``; server side and simulation: ``pipelines.federate_server``;
a loopback deployment for tests and benchmarks: ``pipelines.federate_local``; SuperNode authentication
(site keys, registration, site bindings): ``pipelines.federate_keys``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from pipelines.federate_isolation import ISOLATION, Companion, get_isolation

APP_DIR = Path(__file__).parent / "flwr_app"
REPO_ROOT = Path(__file__).resolve().parent.parent


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


def certificate_files(folder: str, names: Sequence[str]) -> list[Path]:
    """Absolute paths of ``names`` in ``folder`` (Flower needs absolute paths), each checked to exist."""
    paths = [(Path(folder).expanduser() / n).resolve() for n in names]
    missing = [str(f) for f in paths if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"--certificates {folder}: missing {', '.join(missing)}")
    return paths


def _tls_args(args: argparse.Namespace, server: bool) -> list[str]:
    if args.insecure:
        return ["--insecure"]
    if not args.certificates:
        raise ValueError("give --certificates DIR (ca.crt, server.pem, server.key) or --insecure for a local test")
    if server:
        ca, cert, key = certificate_files(args.certificates, ["ca.crt", "server.pem", "server.key"])
        return ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    return ["--root-certificates", str(certificate_files(args.certificates, ["ca.crt"])[0])]


def insecure_warning(what: str, address: str) -> str:
    """The line ``--insecure`` prints: what is exposed, to whom."""
    reach = ("processes on this machine" if address.startswith(("127.", "localhost", "[::1]", "::1"))
             else "anyone who can reach this address")
    return (f"fml federate: WARNING: --insecure: the {what} at {address} uses no TLS and no authentication; "
            f"{reach} can read its traffic and join or launch runs. Use --certificates DIR outside local tests.")


def run_foreground(cmd: list[str], env: dict[str, str], companion: Optional[Callable[[int], list[str]]] = None,
                   on_start: Optional[Callable[[subprocess.Popen], None]] = None) -> int:
    """Run a Flower process in its own process group and wait; SIGTERM/SIGINT to this wrapper, or its
    exit, stop the whole group (the SuperLink/SuperNode and the processes it started), so none is orphaned.

    ``companion(pid)``: the command of a process that must live beside it (a node's long-running ClientApp),
    started in a group of its own, restarted if it dies while the node runs (``supervise``) and stopped
    with the node. ``on_start(proc)`` runs once the process is started (registering keys on a SuperLink);
    if it raises, the process is stopped and the error propagates."""
    import signal

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    procs = [proc]

    def stop(signum: int, _frame: Any) -> None:
        for p in procs:
            _kill_group(p, signal.SIGTERM)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_start is not None:
            on_start(proc)
        if companion is None:
            return proc.wait()
        return supervise(proc, lambda: subprocess.Popen(companion(proc.pid), env=env, start_new_session=True), procs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:
            _kill_group(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            _kill_group(p, signal.SIGKILL)


def supervise(node: subprocess.Popen, start: Callable[[], subprocess.Popen], procs: list[subprocess.Popen],
              quick_exit_s: float = 10.0, max_quick_exits: int = 3, poll_s: float = 0.5) -> int:
    """Wait for ``node``; keep one companion (``start()``) running beside it, restarting it when it dies.
    A companion that dies ``max_quick_exits`` times in a row within ``quick_exit_s`` of its start cannot
    serve the node: the node is stopped (by the caller) and its exit code returned. Every process started
    is appended to ``procs`` (the caller stops them)."""
    companion, started, quick = start(), time.monotonic(), 0
    procs.append(companion)
    while True:
        code = node.poll()
        if code is not None:
            return code
        code = companion.poll()
        if code is not None:
            quick = quick + 1 if time.monotonic() - started < quick_exit_s else 1
            if quick >= max_quick_exits:
                print(f"fml federate: the ClientApp process exited (code {code}) {quick} times within "
                      f"{quick_exit_s:.0f}s of its start; stopping the node", file=sys.stderr)
                return code or 1
            print(f"fml federate: the ClientApp process exited (code {code}); restarting it", file=sys.stderr)
            companion, started = start(), time.monotonic()
            procs.append(companion)
        time.sleep(poll_s)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    # the SuperLink and SuperNode start flower-superexec, flwr-serverapp and flwr-clientapp from PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def superlink_command(address: str, tls: list[str], database: Optional[str] = None, port: int = 9092,
                      supernode_auth: bool = False) -> list[str]:
    """``flower-superlink`` serving its Fleet (SuperNodes), Control (``flwr run``) and Runtime (ServerApp)
    HTTP APIs on ONE port, ``address:port`` (Flower >= 1.42); ``supernode_auth``: only SuperNodes whose
    public key was registered (``flwr supernode register``) may connect."""
    cmd = [flower_bin("flower-superlink"), *tls, "--host", address, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    cmd += ["--database", database] if database else []
    return cmd + (["--enable-supernode-auth"] if supernode_auth else [])


def supernode_command(superlink: str, site: str, tls: list[str], runtime_port: int = 9094, data: Optional[str] = None,
                      mode: Optional[str] = None, vertical: Optional[str] = None, role: Optional[str] = None,
                      cache_dir: Optional[str] = None, extra_config: Sequence[str] = (),
                      isolation: str = "subprocess", private_key: Optional[str] = None) -> list[str]:
    """``flower-supernode`` for ``site``; ``runtime_port``: its local Runtime API (127.0.0.1, one per node);
    ``isolation``: a name of ``pipelines.federate_isolation.ISOLATION`` (its companion, if any, is started
    separately: ``node_companion``); ``private_key``: the node's key for SuperNode authentication (an
    absolute path)."""
    config = [f"site-id={json.dumps(site)}"]
    for key, value in (("data-path", data), ("mode", mode), ("vertical", vertical), ("role", role),
                       ("cache-dir", cache_dir)):
        if value:
            config.append(f"{key}={json.dumps(value)}")
    config += list(extra_config)
    auth = ["--auth-supernode-private-key", private_key] if private_key else []
    return [flower_bin("flower-supernode"), *tls, *auth, "--superlink", superlink, "--host", "127.0.0.1",
            "--port", str(runtime_port), "--isolation", get_isolation(isolation).flower_mode,
            "--node-config", " ".join(config)]


def node_companion(isolation: str, runtime_port: int) -> Optional[Callable[[int], list[str]]]:
    """``companion(supernode_pid) -> command`` of the process ``isolation`` runs beside a SuperNode whose
    Runtime API is 127.0.0.1:``runtime_port`` (None: the SuperNode needs none)."""
    make: Optional[Companion] = get_isolation(isolation).companion
    if make is None:
        return None
    return lambda pid: make(f"127.0.0.1:{runtime_port}", pid)


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
    """A TOML file of run-config overrides for ``flwr run --run-config FILE`` (dotted keys kept whole; a mapping,
    e.g. ``data``, as its JSON text: Flower's run-config values are scalars)."""
    import tomli_w  # Flower's own TOML writer (a dependency of flwr)

    path.write_text(tomli_w.dumps({k: json.dumps(dict(v)) if isinstance(v, Mapping) else v for k, v in items.items()}))
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


#: the option that turns SuperNode authentication on, per subcommand
AUTH_OPTIONS = {"superlink": "--supernode-keys", "supernode": "--private-key"}


def serve_superlink(args: argparse.Namespace) -> int:
    """``fml federate superlink``; with ``--supernode-keys``: Flower's SuperNode authentication, every site's
    key registered once the SuperLink listens, and the ServerApp (a child of the SuperLink, so it inherits
    ``$FML_SITE_BINDINGS``) held to the node id -> site bindings."""
    tls, env = _tls_args(args, True), _env()
    if not args.supernode_keys:
        return run_foreground(superlink_command(args.address, tls, args.database, args.port), env=env)
    from core.federation.bindings import SITE_BINDINGS_ENV
    from pipelines.federate_keys import (bindings_file, control_address, read_site_keys, registration_hook,
                                         take_previous)

    site_keys = read_site_keys(args.supernode_keys)  # every key checked before anything starts
    path = bindings_file(args.database, args.port, args.site_bindings)
    previous = take_previous(path, persistent=bool(args.database))
    env[SITE_BINDINGS_ENV] = str(path)
    ca = certificate_files(args.certificates, ["ca.crt"])[0]
    hook = registration_hook(site_keys, path, control_address(args.address, args.port), ca, env, previous,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    return run_foreground(superlink_command(args.address, tls, args.database, args.port, supernode_auth=True),
                          env=env, on_start=hook)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fml federate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("superlink", help="start a Flower SuperLink (the coordinator's rendezvous)")
    p.add_argument("--address", default="127.0.0.1",
                   help="interface of the SuperLink's API (Fleet, Control, Runtime); 0.0.0.0 for other machines")
    p.add_argument("--port", type=int, default=9092, help="the SuperLink's one port (SuperNodes and flwr run)")
    p.add_argument("--database", help="SQLite file for the SuperLink state (default: in memory)")
    p.add_argument("--certificates", help="folder with ca.crt, server.pem, server.key (TLS)")
    p.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    p.add_argument("--supernode-keys", metavar="FILE",
                   help="SuperNode authentication: a YAML 'site: public key file' mapping (or site,public_key CSV); "
                        "only nodes with these keys may connect, each bound to its site (needs TLS)")
    p.add_argument("--site-bindings", metavar="PATH",
                   help="where to write the node id -> site bindings the ServerApp enforces (default: beside "
                        "--database, else $FML_HOME/superlink-<port>/site-bindings.json)")
    p = sub.add_parser("keys", help="make a site's key pair for SuperNode authentication")
    p.add_argument("--site", required=True, help="the site the key will serve")
    p.add_argument("--out", required=True, help="folder for <site>.key (private, stays at the site) and <site>.pub")
    p = sub.add_parser("supernode", help="start a Flower SuperNode serving one site")
    p.add_argument("--site", required=True, help="site id this node serves")
    p.add_argument("--superlink", default="127.0.0.1:9092", help="SuperLink Fleet API HOST:PORT")
    p.add_argument("--data", help="the site's data file/folder (sets the vertical's path option)")
    p.add_argument("--mode", choices=["federation", "site"], help="federation (default) or site (own data only)")
    p.add_argument("--vertical", help="refuse runs of any other vertical")
    p.add_argument("--role", help="role of the site in site mode (default train)")
    p.add_argument("--runtime-port", type=int, default=9094, help="local Runtime API port (one per node)")
    p.add_argument("--isolation", choices=list(ISOLATION), default="subprocess",
                   help="how ClientApp messages run: " + "; ".join(f"{k}: {v.summary}" for k, v in ISOLATION.items()))
    p.add_argument("--cache-dir", help="keep the prepared site here between messages (default: "
                                       "$FML_HOME/node-cache/<site>; 'none' disables)")
    p.add_argument("--certificates", help="folder with ca.crt (the SuperLink's CA)")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--private-key", metavar="PATH",
                   help="the site's private key (fml federate keys) when the SuperLink authenticates SuperNodes")
    for name, helptext in (("run", "launch a federated run on a SuperLink"),
                           ("simulate", "run the federation in Flower's simulation engine")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("vertical")
        p.add_argument("--preset", default="quick")
        p.add_argument("--algorithm")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="run option, e.g. fed.rounds=20, flower.secagg=true (repeatable)")
        if name == "run":
            p.add_argument("--superlink", default="127.0.0.1:9092", help="SuperLink HOST:PORT")
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
    if args.command == "keys":
        from pipelines.federate_keys import make_key_pair

        private, public = make_key_pair(args.site, Path(args.out))
        print(f"private key (keep it at the site, pass it to fml federate supernode --private-key): {private}\n"
              f"public key (send it to the coordinator for --supernode-keys): {public}")
        return 0
    auth = AUTH_OPTIONS.get(args.command)
    if auth and args.insecure and getattr(args, auth.replace("-", "_").lstrip("_")):
        # Flower's SuperLink refuses --enable-supernode-auth without TLS; say so before anything starts
        print(f"fml federate {args.command}: error: {auth} (SuperNode authentication) needs TLS: give "
              "--certificates DIR instead of --insecure", file=sys.stderr)
        return 2
    if args.command in ("superlink", "supernode", "run") and args.insecure:
        what = {"superlink": "SuperLink", "supernode": "SuperNode's link to the SuperLink", "run": "SuperLink"}
        where = f"{args.address}:{args.port}" if args.command == "superlink" else args.superlink
        print(insecure_warning(what[args.command], where), file=sys.stderr)
    if args.command == "superlink":
        return serve_superlink(args)
    if args.command == "supernode":
        cache = args.cache_dir or str(Path(os.environ.get("FML_HOME", Path.home() / ".fml")).expanduser()
                                      / "node-cache" / args.site)
        key = None
        if args.private_key:
            from pipelines.federate_keys import check_private_key

            key = str(check_private_key(args.private_key))
        return run_foreground(supernode_command(args.superlink, args.site, _tls_args(args, False), args.runtime_port,
                                                args.data, args.mode, args.vertical, args.role,
                                                None if cache == "none" else cache, isolation=args.isolation,
                                                private_key=key),
                              env=_env(), companion=node_companion(args.isolation, args.runtime_port))
    if args.command == "run":
        env = _env()
        ca = str(certificate_files(args.certificates, ["ca.crt"])[0]) if args.certificates else None
        env["FLWR_HOME"] = flower_home(args.superlink, args.insecure, ca)
        overrides = write_run_config(run_config_items(args.vertical, args.preset, args.algorithm, args.set),
                                     Path(env["FLWR_HOME"]) / "run-config.toml")
        cmd = [flower_bin("flwr"), "run", str(APP_DIR), "fml", "--run-config", str(overrides)]
        return subprocess.call(cmd + ([] if args.no_stream else ["--stream"]), env=env)
    config: dict[str, Any] = {"vertical": args.vertical, "preset": args.preset}
    if args.algorithm:
        config["algorithm"] = args.algorithm
    config.update(run_config_items(args.vertical, args.preset, args.algorithm, args.set))
    from pipelines.federate_server import simulate

    result = simulate(config, num_nodes=args.nodes)
    last = result.rounds[-1].metrics if result.rounds else {}
    print(json.dumps({"rounds": len(result.rounds), "mlflow_run_id": result.mlflow_run_id,
                      "kept_rounds": result.kept_rounds, "kept_by": result.kept_by, "last_round": last, "evaluation": result.evaluations.get(len(result.rounds), {}),
                      "registered": (result.finish or {}).get("registered")}, default=str))
    return 0


if __name__ == "__main__":  # ``python -m pipelines.federate ...`` (= ``fml federate ...``)
    sys.exit(main(sys.argv[1:]))
