"""A REAL Flower deployment on 127.0.0.1: ``flower-superlink`` and 3 ``flower-supernode`` processes (free
ports, insecure), runs submitted with ``flwr run``, the R1 digits vertical, MLflow in a temporary SQLite
store. Covers: the MLflow run and the registered model, a SuperNode killed mid-run, NaN and wrongly shaped
updates rejected with a logged reason, and SecAgg+ giving the plain aggregate within quantization error.

Every process is started in its own session and killed with its process group, also on failure
(``LocalFederation.__exit__``). The shared cluster runs its nodes in ``process`` isolation (one long-running
ClientApp process per node, which serves the runs of both apps); the killed-node test keeps Flower's default
(``subprocess``: a fresh ClientApp process, torch import + data, for every message), so both are deployed here.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from pipelines.federate import APP_DIR  # noqa: E402
from pipelines.federate_local import LocalFederation  # noqa: E402
from tests._flower_processes import require_flower_executables  # noqa: E402

require_flower_executables()

pytestmark = pytest.mark.slow  # real processes / end-to-end runs: `-m "not slow"` skips them

SITES = ["train-000", "train-001", "train-002"]
FAULTS = {"train-000": {"fault": "nan"}, "train-001": {"fault": "shape"}}

FAULT_APP = '''
"""Test-only ClientApp: the FML ClientApp plus a mod that corrupts this node's update (node config 'fault')."""
import torch
from flwr.app import ArrayRecord

from core.federation.client import make_client_app
from pipelines.federate_node import load_site


def corrupt(msg, ctx, call_next):
    reply = call_next(msg, ctx)
    fault = ctx.node_config.get("fault")
    if msg.metadata.message_type != "train" or not fault or reply.has_error():
        return reply
    params = {k: torch.from_numpy(a.numpy().copy()) for k, a in reply.content["arrays"].items()}
    first = next(iter(params))
    params[first] = torch.full_like(params[first], float("nan")) if fault == "nan" else torch.zeros(3, 3)
    reply.content["arrays"] = ArrayRecord(params)
    return reply


client = make_client_app(load_site, mods=[corrupt])
'''


def run_config(workdir: Path, experiment: str, **overrides) -> dict:
    config = {
        "vertical": "digits", "preset": "quick", "algorithm": "fomaml", "experiment": experiment,
        "data": {"train_sites": 3, "validation_sites": 1, "test_sites": 2},
        "fed.rounds": 2, "fed.clients_per_round": 3,
        "flower.eval_roles": ",", "flower.finish": False,
        "flower.round_timeout": 240.0, "flower.connect_timeout": 240.0,
        "flower.event_log": str(workdir / f"{experiment}-events.jsonl"),
        "options": {"eval.shots": [1], "eval.steps": [0, 5], "eval.draws": 1, "eval.select_draws": 1,
                    "eval.lr_grid": [0.1]},
    }
    config.update(overrides)
    return config


def events(config: dict) -> list[dict]:
    path = Path(config["flower.event_log"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def mlflow_run(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}: the ServerApp did not start its run"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def final_meta(uri: str, run_id: str) -> dict[str, torch.Tensor]:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="federation/meta.pt", tracking_uri=uri)
    return torch.load(path, weights_only=True)


def run_or_explain(fed: LocalFederation, config: dict, name: str, timeout: float = 900, app_dir=None) -> str:
    try:
        return fed.run(config, timeout=timeout, name=name, app_dir=app_dir)
    except TimeoutError as err:
        pytest.fail(f"{err}\n{fed.logs()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SuperLink + 3 SuperNodes (train-000 and train-001 carry a 'fault' the regular app ignores)."""
    workdir = tmp_path_factory.mktemp("flower")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    fault_app = workdir / "fault_app"
    fault_app.mkdir()
    toml = (APP_DIR / "pyproject.toml").read_text().replace('"pipelines.flower_app:client"', '"fml_fault_app:client"')
    (fault_app / "pyproject.toml").write_text(toml)
    (fault_app / "fml_fault_app.py").write_text(FAULT_APP)
    with LocalFederation(SITES, workdir, node_config=FAULTS, isolation="process",
                         env={"MLFLOW_TRACKING_URI": uri, "FML_HOME": str(workdir / "fml")}) as fed:
        fed.uri, fed.fault_app = uri, fault_app
        yield fed


def test_deployed_run_logs_rounds_and_registers_the_meta_init(cluster):
    options = {**run_config(cluster.workdir, "")["options"], "fed.val_every": 1}  # not an app key: via options
    config = run_config(cluster.workdir, "deploy", options=options, **{"flower.finish": True,
                                                                       "flower.eval_roles": "train", "flower.eval_draws": 1})
    run_or_explain(cluster, config, "deploy")
    client, run = mlflow_run(cluster.uri, "deploy")
    assert run.info.status == "FINISHED", cluster.logs()
    assert run.data.tags["engine"] == "flower" and run.data.params["algorithm"] == "fomaml"
    history = client.get_metric_history(run.info.run_id, "fed/clients")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 3.0)]
    assert len(client.get_metric_history(run.info.run_id, "train/query_loss")) == 2
    assert "val/accuracy/steps5" in run.data.metrics  # federated few-shot evaluation on the nodes
    assert any(k.startswith("test/accuracy/fomaml/") for k in run.data.metrics)  # held-out protocol
    # the coordinator validated every round on the validation site and kept the best round, as fml run does
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")] == [1, 2]
    selected = [e["round"] for e in events(config) if e["kind"] == "round_selected"]
    assert len(selected) == 1 and run.data.tags["fomaml.kept_rounds"] == str(selected[0])
    assert run.data.tags["fomaml.kept_by"] == "validation"
    version = client.get_model_version_by_alias("fml-digits", "champion")
    assert version.run_id == run.info.run_id and version.tags["engine"] == "flower"
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(cluster.uri)
    mlflow.set_registry_uri(cluster.uri)
    try:
        model = mlflow.pytorch.load_model(f"models:/fml-digits/{version.version}")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert model(torch.zeros(2, 64)).shape == (2, 5)


def test_nan_and_wrongly_shaped_updates_are_rejected_with_a_reason(cluster):
    config = run_config(cluster.workdir, "faults")
    run_or_explain(cluster, config, "faults", app_dir=cluster.fault_app)  # same nodes, the corrupting app
    _, run = mlflow_run(cluster.uri, "faults")
    assert run.info.status == "FINISHED", cluster.logs()
    rejected = [e for e in events(config) if e["kind"] == "update_rejected"]
    reasons = {(e["round"], e["site"]): e["reason"] for e in rejected}
    for r in (1, 2):
        assert "non-finite" in reasons[(r, "train-000")]
        assert "shape [3, 3]" in reasons[(r, "train-001")]
    ends = [e for e in events(config) if e["kind"] == "round_end"]
    assert [e["accepted"] for e in ends] == [["train-002"], ["train-002"]]
    assert all(e["applied"] for e in ends)
    meta = final_meta(cluster.uri, run.info.run_id)
    assert all(torch.isfinite(v).all() for v in meta.values())
    assert "non-finite" in run.data.tags["fed.rejected_updates"]


def test_secagg_plus_aggregate_equals_the_plain_one(cluster):
    common = {"server.optimizer": "sgd", "server.lr": 0.1, "fed.rounds": 1}
    plain = run_config(cluster.workdir, "plain", **common)
    secure = run_config(cluster.workdir, "secagg", **common, **{"flower.secagg": True})
    run_or_explain(cluster, plain, "plain")
    run_or_explain(cluster, secure, "secagg")
    _, plain_run = mlflow_run(cluster.uri, "plain")
    _, secure_run = mlflow_run(cluster.uri, "secagg")
    assert secure_run.info.status == "FINISHED", cluster.logs()
    ends = [e for e in events(secure) if e["kind"] == "round_end"]
    assert [sorted(e["accepted"]) for e in ends] == [SITES] and all(e["applied"] for e in ends)
    a, b = final_meta(cluster.uri, plain_run.info.run_id), final_meta(cluster.uri, secure_run.info.run_id)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)  # quantization: 16 / 2**22 per entry
    from core.algorithms import InnerConfig, get_algorithm
    from core.initialization import initial_meta
    from data_adapters.digits import DigitsData
    from verticals.digits import prepare

    digits = prepare(DigitsData(train_sites=3, validation_sites=0, test_sites=1), seed=0)
    init = initial_meta(digits, get_algorithm("fomaml"), InnerConfig(), seed=0)  # the init the nodes sent
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-4  # the rounds really moved the model


def test_secagg_plus_with_dp_clips_on_the_sites_like_the_server_does(cluster):
    """DP-FedAvg with SecAgg+ (the sites clip, the server noises the secure sum; noise 0 here) moves the model
    exactly as DP-FedAvg without it (the server clips), to SecAgg+'s quantization; the run records both."""
    options = {**run_config(cluster.workdir, "")["options"], "fed.dp_clip": 0.05}  # not an app key: via options
    common = {"server.optimizer": "sgd", "server.lr": 1.0, "fed.rounds": 1, "options": options}
    plain = run_config(cluster.workdir, "dp-plain", **common)
    secure = run_config(cluster.workdir, "dp-secagg", **common, **{"flower.secagg": True})
    run_or_explain(cluster, plain, "dp-plain")
    run_or_explain(cluster, secure, "dp-secagg")
    _, plain_run = mlflow_run(cluster.uri, "dp-plain")
    _, secure_run = mlflow_run(cluster.uri, "dp-secagg")
    assert secure_run.info.status == "FINISHED", cluster.logs()
    assert secure_run.data.tags["fed.privacy"].startswith("secagg+ & dp-fedavg")
    assert plain_run.data.tags["fed.privacy"].startswith("dp-fedavg")
    started = next(e for e in events(secure) if e["kind"] == "run_started")
    assert started["privacy"].startswith("secagg+ & dp-fedavg")
    a, b = final_meta(cluster.uri, plain_run.info.run_id), final_meta(cluster.uri, secure_run.info.run_id)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)


def test_killed_supernode_mid_run_is_logged_and_the_run_finishes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = run_config(tmp_path, "killed", **{"fed.rounds": 3, "flower.min_available_clients": 2})
    with LocalFederation(SITES, tmp_path, env={"MLFLOW_TRACKING_URI": uri}) as fed:
        proc = fed.submit(config, "killed")
        deadline = time.monotonic() + 600
        while not any(e["kind"] == "round_end" and e["round"] == 1 for e in events(config)):
            assert proc.poll() is None, f"run ended before round 1 finished\n{fed.logs()}"
            assert time.monotonic() < deadline, f"round 1 did not finish\n{fed.logs()}"
            time.sleep(0.5)
        fed.kill_node("train-001")
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish after a node died\n{fed.logs()}")
    _, run = mlflow_run(uri, "killed")
    assert run.info.status == "FINISHED"
    lost = [e for e in events(config) if e["kind"] == "node_lost"]
    assert [(e["site"], e["round"]) for e in lost] == [("train-001", 2)], lost
    ends = {e["round"]: e for e in events(config) if e["kind"] == "round_end"}
    assert sorted(ends) == [1, 2, 3]
    assert "train-001" in ends[2]["lost"]
    assert sorted(ends[2]["accepted"]) == ["train-000", "train-002"]
    assert all(sorted(ends[r]["accepted"]) == ["train-000", "train-002"] for r in (2, 3))
    assert "round 2: train-001" in run.data.tags["fed.lost_nodes"]
    shutil.rmtree(tmp_path / "flwr-home", ignore_errors=True)
