"""SuperNode authentication with a REAL SuperLink and SuperNodes on 127.0.0.1 with TLS, all started through
the ``fml federate`` wrapper (certificates and keys made in the test):

    fml federate superlink --certificates certs --supernode-keys sites.yaml     (train-000, -001, -002 keys)
    fml federate supernode --site ... --private-key ... --certificates certs    (six nodes, below)
    fml federate run digits ...                                                (one round, two sites)

Nodes: the two legitimate sites (train-000, train-001); an impostor holding train-002's registered key
but declaring train-000; a node with a key nobody registered; a node with no key; a node whose key was
registered on the SuperLink by hand (``flwr supernode register``), outside the coordinator's sites file.
One deployment and one run serve every test of the module (it is slow on a loaded 2-core machine).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from core.federation.bindings import SiteBindings  # noqa: E402
from pipelines.federate import flower_bin, flower_home  # noqa: E402
from pipelines.federate_keys import make_key_pair  # noqa: E402
from pipelines.federate_local import free_port  # noqa: E402
from tests._flower_tls import make_certificates  # noqa: E402
from tests._flower_processes import require_flower_executables  # noqa: E402

require_flower_executables()

pytestmark = pytest.mark.slow  # real processes / end-to-end runs: `-m "not slow"` skips them

REPO = Path(__file__).resolve().parent.parent
#: node name -> (key holder, declared site, isolation); key holder None = no --private-key
NODES = {
    "train-000": ("train-000", "train-000", "process"),
    "train-001": ("train-001", "train-001", "process"),
    "impostor": ("train-002", "train-000", "subprocess"),  # train-002's registered key, claims train-000
    "unregistered": ("stranger", "train-002", "subprocess"),  # a key the coordinator never listed
    "keyless": (None, "train-002", "subprocess"),
    "by-hand": ("by-hand", "train-002", "subprocess"),  # registered with flwr, not in sites.yaml
}
REFUSED_BY_FLOWER = ("unregistered", "keyless")


class Deployment:
    """The wrapper processes (each in its own session, stopped with its group) and their logs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.procs = workdir, {}
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "FML_HOME": str(workdir / "fml"), "OMP_NUM_THREADS": "1"}
        self.env.pop("MLFLOW_TRACKING_URI", None)  # the run's store: $FML_HOME/mlflow.db

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.federate", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"==> {n}\n" + "\n".join(self.log(n).splitlines()[-25:]) for n in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the wrapper stops its Flower processes
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for(what: str, check, timeout: float, dep: Deployment, alive: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if alive.poll() is not None:
            pytest.fail(f"{what}: {alive.args[3:5]} exited with code {alive.returncode}\n{dep.logs()}")
        time.sleep(1.0)
    pytest.fail(f"{what}: not within {timeout:.0f}s\n{dep.logs()}")


def flwr_json(env: dict, *args: str) -> dict:
    out = subprocess.run([flower_bin("flwr"), *args, "--format", "json"], env=env, capture_output=True, text=True,
                         timeout=120).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth")
    certs = make_certificates(workdir / "certs")
    keys = {site: make_key_pair(site, workdir / "keys") for site in ("train-000", "train-001", "train-002",
                                                                      "stranger", "by-hand")}
    (workdir / "sites.yaml").write_text("".join(f"{s}: keys/{s}.pub\n" for s in ("train-000", "train-001",
                                                                                "train-002")))
    dep, port = Deployment(workdir), free_port()
    superlink = f"127.0.0.1:{port}"
    try:
        link = dep.start("superlink", "superlink", "--certificates", str(certs), "--port", str(port),
                         "--supernode-keys", str(workdir / "sites.yaml"),
                         "--site-bindings", str(workdir / "bindings.json"))
        wait_for("site keys registered", lambda: (workdir / "bindings.json").exists(), 400, dep, link)
        dep.bindings = SiteBindings.read(workdir / "bindings.json")
        cli_env = {**dep.env, "FLWR_HOME": flower_home(superlink, False, str(certs / "ca.crt"),
                                                       home=str(workdir / "flwr-home"))}
        dep.by_hand = int(flwr_json(cli_env, "supernode", "register", str(keys["by-hand"][1]), "fml")["node-id"])
        for name, (holder, site, isolation) in NODES.items():
            key = ["--private-key", str(keys[holder][0])] if holder else []
            dep.start(name, "supernode", "--site", site, *key, "--certificates", str(certs), "--superlink", superlink,
                      "--runtime-port", str(free_port()), "--isolation", isolation,
                      "--cache-dir", str(workdir / "cache" / name))
        expected = {*dep.bindings.nodes, dep.by_hand}

        def online() -> bool:
            nodes = flwr_json(cli_env, "supernode", "list", "fml")["nodes"]
            return {int(n["node-id"]) for n in nodes if n["status"] == "online"} == expected

        wait_for("the four nodes with registered keys online", online, 400, dep, link)
        dep.listed = {int(n["node-id"]) for n in flwr_json(cli_env, "supernode", "list", "fml")["nodes"]}
        dep.events = workdir / "events.jsonl"
        run = dep.start("run", "run", "digits", "--superlink", superlink, "--certificates", str(certs),
                        "--algorithm", "fomaml", "--set", "experiment=auth",
                        "--set", 'data={"train_sites": 3, "validation_sites": 1, "test_sites": 2}',
                        "--set", "fed.rounds=1", "--set", "fed.clients_per_round=2",
                        "--set", "flower.min_available_clients=2", "--set", 'flower.eval_roles=","',
                        "--set", "flower.finish=false", "--set", "flower.round_timeout=300",
                        "--set", f"flower.event_log={dep.events}")
        try:
            dep.run_code = run.wait(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish in 600 s\n{dep.logs()}")
        for name in REFUSED_BY_FLOWER:  # long gone by now; a node still running would be a failure below
            try:
                dep.procs[name].wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        yield dep
    finally:
        dep.stop()


def events(dep: Deployment, kind: str) -> list[dict]:
    found = [json.loads(line) for line in dep.events.read_text().splitlines()] if dep.events.exists() else []
    return [e for e in found if e["kind"] == kind]


def node_of(dep: Deployment, site: str) -> int:
    return next(b.node_id for b in dep.bindings.nodes.values() if b.site == site)


def test_the_registered_sites_join_with_their_keys_node_ids_and_the_run_completes(deployment):
    dep = deployment
    assert dep.run_code == 0, dep.logs()
    joined = {(e["node"], e["site"]) for e in events(dep, "node_joined")}
    assert joined == {(node_of(dep, "train-000"), "train-000"), (node_of(dep, "train-001"), "train-001")}
    (end,) = events(dep, "round_end")
    assert sorted(end["accepted"]) == ["train-000", "train-001"] and end["applied"], dep.logs()
    assert events(dep, "run_finished")


@pytest.mark.parametrize("name, message", [("unregistered", "Failed to activate SuperNode"),
                                           ("keyless", "All SuperNodes must be registered")])
def test_flower_refuses_a_node_whose_key_is_not_registered(deployment, name, message):
    dep = deployment
    proc = dep.procs[name]
    assert proc.poll() not in (None, 0), f"{name} is still running or exited cleanly\n{dep.log(name)}"
    assert message in dep.log(name)
    assert dep.listed == {*dep.bindings.nodes, dep.by_hand}  # the SuperLink never knew it
    seen = {e["node"] for kind in ("node_joined", "node_refused") for e in events(dep, kind)}
    assert seen <= dep.listed


def test_a_registered_key_claiming_another_site_is_refused_and_that_site_still_serves(deployment):
    dep = deployment
    impostor = node_of(dep, "train-002")
    (refused,) = [e for e in events(dep, "node_refused") if e["node"] == impostor]
    assert (refused["site"], refused["bound_site"]) == ("train-000", "train-002")
    assert "declares site 'train-000' but its key is registered for site 'train-002'" in refused["reason"]
    assert (node_of(dep, "train-000"), "train-000") in {(e["node"], e["site"]) for e in events(dep, "node_joined")}
    assert dep.procs["impostor"].poll() is None  # Flower let it in (its key is valid): the roster refused it


def test_a_key_registered_outside_the_sites_file_is_refused_without_being_asked_anything(deployment):
    dep = deployment
    (refused,) = [e for e in events(dep, "node_refused") if e["node"] == dep.by_hand]
    assert "has no site binding" in refused["reason"]
    assert "Receiving:" not in dep.log("by-hand")  # not even the run's description request reached it
