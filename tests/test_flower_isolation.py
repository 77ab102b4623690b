"""``--isolation process``: one long-running ClientApp process per SuperNode (``pipelines.federate_clientapp``).

Fast tests: the wrapper's supervision of that process (restart, give up, stop with the node on SIGTERM).
Slow test: a REAL loopback deployment (SuperLink + 3 SuperNodes, ``flwr run``, 2 rounds) in which every
message a node receives is run by its one ClientApp process, and the SuperNode starts no process of its own.
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

from pipelines.federate import supervise
from pipelines.federate_isolation import get_isolation

pytestmark = pytest.mark.slow  # real processes / end-to-end runs: `-m "not slow"` skips them

REPO = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_unknown_isolation_lists_the_choices():
    with pytest.raises(ValueError, match="subprocess, process, superexec"):
        get_isolation("thread")


def test_a_dying_clientapp_process_is_restarted_while_the_node_runs():
    node = subprocess.Popen(["sleep", "2"])
    procs = [node]
    try:
        code = supervise(node, lambda: subprocess.Popen(["sh", "-c", "sleep 0.3; exit 5"]), procs,
                         quick_exit_s=0.1, poll_s=0.05)
    finally:
        procs[-1].kill()  # the caller (run_foreground) stops the last one
        procs[-1].wait()
    assert code == 0  # the node's own exit, not the ClientApp process's
    assert len(procs) >= 4 and all(p.wait(timeout=5) == 5 for p in procs[1:-1])


def test_a_clientapp_process_that_cannot_start_stops_the_node():
    node = subprocess.Popen(["sleep", "30"])
    procs = [node]
    try:
        code = supervise(node, lambda: subprocess.Popen(["sh", "-c", "exit 3"]), procs, quick_exit_s=10, poll_s=0.05)
        assert code == 3 and len(procs) == 4 and node.poll() is None  # 3 quick exits; stopping is the caller's
    finally:
        node.kill()
        node.wait()


def processes_with(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if text in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_sigterm_to_the_supernode_wrapper_stops_the_node_and_its_clientapp_process(tmp_path):
    _deployment_ready()
    from pipelines.federate_local import free_port, wait_port

    runtime_port, nowhere = free_port(), free_port()  # no SuperLink: the node keeps retrying, its API is up
    wrapper = subprocess.Popen([sys.executable, "-m", "pipelines.federate", "supernode", "--insecure", "--site", "s1",
                                "--superlink", f"127.0.0.1:{nowhere}", "--runtime-port", str(runtime_port),
                                "--isolation", "process"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO), "FML_HOME": str(tmp_path)})
    try:
        wait_port(runtime_port, timeout=120, proc=wrapper)
        address = f"--runtime-api-address 127.0.0.1:{runtime_port}"
        deadline = time.monotonic() + 30
        while not processes_with(address) and time.monotonic() < deadline:
            time.sleep(0.2)
        (worker,) = processes_with(address)  # the one long-running ClientApp process of this node
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=30) == 128 + signal.SIGTERM
        assert not alive(worker) and not processes_with(f"--port {runtime_port}"), "orphaned node processes"
    finally:
        if wrapper.poll() is None:
            wrapper.kill()


# ------------------------------------------------------------------------------------------ real deployment
def _deployment_ready() -> None:
    pytest.importorskip("flwr")
    from pipelines.federate import flower_bin

    try:
        for exe in ("flower-superlink", "flower-supernode", "flwr"):
            flower_bin(exe)
    except FileNotFoundError as err:  # pragma: no cover
        pytest.skip(f"Flower executables missing: {err}")


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def final_meta(fml_home: Path, experiment: str) -> dict:
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{fml_home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="federation/meta.pt",
                                               tracking_uri=uri)
    return torch.load(path, weights_only=True)


def in_process_meta(config: dict) -> dict:
    """The same rounds on the in-process engine (``MetaLearner.run_round``)."""
    from core.learner import MetaLearner
    from pipelines.federate_node import data_config, vertical_spec
    from pipelines.federate_server import resolve_run

    run = resolve_run(config)
    spec = vertical_spec("digits")
    learner = MetaLearner(spec.prepare(data_config(spec, config["data"]), run.seed), run.algorithm, run.inner,
                          run.fed, run.server, run.seed)
    optimizer = learner.configure_optimizers()
    learner.optimizers = lambda *a, **k: optimizer  # run_round outside a Trainer
    for r in range(run.fed.rounds):
        learner.run_round(r)
    return learner.meta_params()


def test_process_isolation_runs_every_message_in_one_long_running_clientapp(tmp_path):
    """Two runs on the same nodes: a 1-round run with seed 1 warms the ClientApp processes, then a 2-round
    run with seed 0 must give the in-process engine's meta-parameters (nothing of run 1 leaks into run 2),
    and every message of both runs is served by the node's one ClientApp process."""
    _deployment_ready()
    import torch

    from pipelines.federate_local import LocalFederation

    sites = ["train-000", "train-001", "train-002"]
    base = {"vertical": "digits", "preset": "quick", "algorithm": "fomaml",
            "data": {"train_sites": 3, "validation_sites": 1, "test_sites": 2},
            "fed.clients_per_round": 3, "flower.eval_roles": ",", "flower.finish": False,
            "flower.round_timeout": 240.0, "flower.connect_timeout": 240.0}
    warm = {**base, "experiment": "warm", "seed": 1, "fed.rounds": 1, "flower.event_log": str(tmp_path / "warm.jsonl")}
    config = {**base, "experiment": "measured", "seed": 0, "fed.rounds": 2,
              "flower.event_log": str(tmp_path / "measured.jsonl")}
    env = {"FML_HOME": str(tmp_path / "fml"), "OMP_NUM_THREADS": "1"}
    with LocalFederation(sites, tmp_path, env=env, isolation="process") as fed:
        try:
            fed.run(warm, timeout=600, name="warm")
            fed.run(config, timeout=600, name="measured")
        except TimeoutError as err:
            pytest.fail(f"{err}\n{fed.logs()}")
        workers = {s: fed.procs[f"clientapp-{s}"] for s in sites}
        assert all(w.poll() is None for w in workers.values()), fed.logs()  # still serving after the runs
        for site in sites:  # the SuperNode started no SuperExec or flwr-clientapp: alone in its group
            node = fed.procs[f"supernode-{site}"]
            assert group_members(node.pid) == [node.pid], f"{site}: {group_members(node.pid)}\n{fed.logs()}"
    ends = [json.loads(line) for line in Path(config["flower.event_log"]).read_text().splitlines()
            if json.loads(line)["kind"] == "round_end"]
    assert [e["round"] for e in ends] == [1, 2] and all(sorted(e["accepted"]) == sites for e in ends), ends
    for site in sites:
        received = (tmp_path / f"supernode-{site}.log").read_text().count("Receiving:")
        done = [line for line in (tmp_path / f"clientapp-{site}.log").read_text().splitlines() if " done: " in line]
        assert received == 5 and len(done) == received, (site, received, done)  # 2 queries + 3 train messages
        assert all("completed" in line and line.endswith(f"in pid {workers[site].pid}") for line in done), done
    deployed, reference = final_meta(tmp_path / "fml", "measured"), in_process_meta(config)
    assert deployed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(deployed[name], reference[name], rtol=1e-5, atol=1e-6)
    other = final_meta(tmp_path / "fml", "warm")  # the comparison can fail: another seed gives another model
    assert max(float((other[k] - reference[k]).abs().max()) for k in reference) > 1e-3
