"""A real Flower deployment on one machine: a SuperLink and N SuperNodes as separate processes on
127.0.0.1 (free ports, insecure), for tests, benchmarks and trying the deployment path locally.

    with LocalFederation(["train-000", "train-001", "train-002"], workdir) as fed:
        fed.run({"vertical": "digits", "fed.rounds": 3})

Every process is started in its own session and stopped with its whole process group (the SuperNode's
SuperExec and ClientApp children included), also when the block raises. ``isolation="process"`` runs each
node's messages in one long-running ClientApp process (``clientapp-<site>``, see
``pipelines.federate_isolation``).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pipelines.federate import (APP_DIR, _env, flower_bin, flower_home, node_companion, superlink_command,
                                supernode_command, write_run_config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: Optional[subprocess.Popen] = None) -> None:
    """Wait until something listens on ``port``; fail at once if ``proc`` (the server) exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode} before listening on port {port}")
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class LocalFederation:
    """SuperLink + one SuperNode per site on loopback; ``run`` submits the app with ``flwr run``.

    Args:
        sites: site id of each SuperNode.
        workdir: logs, ``FLWR_HOME`` and run-config files go here.
        app_dir: the Flower app folder (default: ``pipelines/flwr_app``).
        node_config: extra node-config entries per site (``{"train-000": {"fault": "nan"}}``).
        env: extra environment for every process (e.g. ``MLFLOW_TRACKING_URI``).
        isolation: how nodes run ClientApp messages (``pipelines.federate_isolation.ISOLATION``).
    """

    def __init__(self, sites: Sequence[str], workdir: Path, app_dir: Path = APP_DIR,
                 node_config: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 env: Optional[Mapping[str, str]] = None, isolation: str = "subprocess") -> None:
        self.sites, self.workdir, self.app_dir = list(sites), Path(workdir), Path(app_dir)
        self.isolation = isolation
        self.node_config = {k: dict(v) for k, v in (node_config or {}).items()}
        self.env = _env()
        self.env.update(env or {})
        if env and "FML_HOME" in env and "MLFLOW_TRACKING_URI" not in env:
            self.env.pop("MLFLOW_TRACKING_URI", None)  # the run's store is $FML_HOME/mlflow.db
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env["FLWR_HOME"] = str(self.workdir / "flwr-home")
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()  # the SuperLink's one port: Fleet, Control and Runtime APIs

    # ------------------------------------------------------------------------------------------ processes
    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self) -> "LocalFederation":
        flower_home(f"127.0.0.1:{self.port}", True, None, home=self.env["FLWR_HOME"])
        superlink = self._start("superlink", superlink_command("127.0.0.1", ["--insecure"], None, self.port))
        try:
            wait_port(self.port, 60, superlink)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{err}\n{self.logs()}") from None
        for site in self.sites:
            self.start_node(site)
        return self

    def start_node(self, site: str) -> subprocess.Popen:
        extra = [f"{k}={json.dumps(v)}" for k, v in self.node_config.get(site, {}).items()]
        runtime_port = free_port()
        cmd = supernode_command(f"127.0.0.1:{self.port}", site, ["--insecure"],
                                runtime_port, cache_dir=str(self.workdir / "node-cache" / site),
                                extra_config=extra, isolation=self.isolation)
        node = self._start(f"supernode-{site}", cmd)
        companion = node_companion(self.isolation, runtime_port)
        if companion is not None:
            self._start(f"clientapp-{site}", companion(node.pid))
        return node

    def kill_node(self, site: str, sig: int = signal.SIGKILL) -> None:
        """Kill a SuperNode and everything it started (a node dying, not leaving politely)."""
        for name in (f"supernode-{site}", f"clientapp-{site}"):
            if name in self.procs:
                self._signal(self.procs[name], sig)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the group of the session this process leads
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        for proc in self.procs.values():
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._signal(proc, signal.SIGKILL)  # children still in the group
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "LocalFederation":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ runs
    def submit(self, config: Mapping[str, Any], name: str = "run", app_dir: Optional[Path] = None) -> subprocess.Popen:
        """Start ``flwr run <app> --run-config FILE --stream`` (returns the process; its log is ``<name>.log``)."""
        overrides = write_run_config(config, self.workdir / f"{name}-config.toml")
        cmd = [flower_bin("flwr"), "run", str(app_dir or self.app_dir), "fml", "--run-config", str(overrides),
               "--stream"]
        log = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, config: Mapping[str, Any], timeout: float = 600, name: str = "run",
            app_dir: Optional[Path] = None) -> str:
        """Submit and wait for the run to end; returns its streamed log."""
        proc = self.submit(config, name, app_dir)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGKILL)
            raise TimeoutError(f"flwr run did not finish in {timeout:.0f}s; see {self.workdir / (name + '.log')}")
        return (self.workdir / f"{name}.log").read_text()

    def logs(self) -> str:
        """Tail of every process log (for failure messages)."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"==> {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)
