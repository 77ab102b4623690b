"""Registry conventions: champion/challenger decisions, metadata round trip, readable errors."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

import mlflow
from core import tracking


def _log(value_model: torch.nn.Module, meta, info):
    with mlflow.start_run():
        return tracking.log_meta_init(value_model, meta, info, torch.zeros(2, 3))


def test_champion_challenger_and_round_trip(fml_home):
    uri = tracking.setup_tracking()
    assert uri == f"sqlite:///{fml_home / 'mlflow.db'}"
    exp = tracking.ensure_experiment("fml-test")
    # artifacts of the embedded store live under FML_HOME, never in the working directory
    assert str(fml_home.resolve()) in MlflowClient().get_experiment(exp).artifact_location
    mlflow.set_experiment(experiment_id=exp)
    model = torch.nn.Linear(3, 2)
    meta = {k: v.detach() + 1.0 for k, v in model.named_parameters()}
    meta["inner_lr/weight"] = torch.full((2, 3), 0.07)
    meta["inner_lr/bias"] = torch.full((2,), 0.07)
    info = {"vertical": "x", "algorithm": "metasgd", "preprocessing": {"mean": [1.0, 2.0]}}
    decisions = []
    for value in (0.5, 0.4, 0.6):
        model_uri = _log(model, meta, info)
        decisions.append(tracking.register(model_uri, "fml-x", {"algorithm": "metasgd"}, "auc", value, True))
    assert [d[1] for d in decisions] == ["champion", "challenger", "champion"]
    assert "does not beat champion v1" in decisions[1][2]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("fml-x", "champion").version) == "3"
    assert str(client.get_model_version_by_alias("fml-x", "challenger").version) == "2"
    loaded = tracking.load_meta_init("models:/fml-x@champion")
    assert loaded.info["preprocessing"] == {"mean": [1.0, 2.0]}
    assert torch.allclose(loaded.meta["weight"], meta["weight"])
    assert torch.allclose(loaded.meta["inner_lr/weight"], meta["inner_lr/weight"])
    assert str(loaded.version) == "3"
    # lower-is-better metrics compare the other way
    model_uri = _log(model, meta, info)
    assert tracking.register(model_uri, "fml-y", {}, "rmse", 20.0, False)[1] == "champion"
    model_uri = _log(model, meta, info)
    assert tracking.register(model_uri, "fml-y", {}, "rmse", 25.0, False)[1] == "challenger"
    rows = tracking.list_models()
    assert {(r["name"], str(r["version"])) for r in rows} >= {("fml-x", "1"), ("fml-x", "3"), ("fml-y", "2")}


def test_unknown_model_or_alias_is_a_readable_error(fml_home):
    tracking.setup_tracking()
    with pytest.raises(tracking.RegistryError, match="cannot resolve 'models:/fml-none@champion'.*fml models"):
        tracking.load_meta_init("models:/fml-none@champion")


def test_champion_moves_only_between_comparable_evaluations(fml_home):
    """A version evaluated on another dataset or protocol never takes @champion by a 'better' number."""
    tracking.setup_tracking()
    mlflow.set_experiment(experiment_id=tracking.ensure_experiment("fml-test"))
    model = torch.nn.Linear(3, 2)
    meta = {k: v.detach() for k, v in model.named_parameters()}
    claims = tracking.evaluation_identity(data="claims", roles={"test": ["Saab"]}, shots=[1, 5])
    other = tracking.evaluation_identity(data="breast-cancer", roles={"test": ["A"]}, shots=[1, 5])
    assert claims != other and claims == tracking.evaluation_identity(shots=[1, 5], roles={"test": ["Saab"]},
                                                                      data="claims")
    decisions = []
    for value, identity in ((0.2, claims), (0.99, other), (0.25, claims)):
        uri = _log(model, meta, {"vertical": "x", "algorithm": "fomaml"})
        decisions.append(tracking.register(uri, "fml-z", {tracking.IDENTITY_TAG: identity}, "auc", value, True))
    assert [d[1] for d in decisions] == ["challenger" if i == 1 else "champion" for i in range(3)]
    assert "not comparable with champion v1" in decisions[1][2]
    assert str(MlflowClient().get_model_version_by_alias("fml-z", "champion").version) == "3"


def _fml(args, env, timeout=60):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env})


def test_an_unwritable_fml_home_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = _fml(["models"], {"FML_HOME": str(blocker / "home"), "MLFLOW_TRACKING_URI": ""})
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "is not a writable folder" in done.stderr


def test_onboarding_with_an_unwritable_fml_home_stops_before_adapting(tmp_path):
    """Regression (issue 15): ``fml onboard`` adapted first, then failed with an 89-line MLflow dump."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = _fml(["onboard", "digits"], {"FML_HOME": str(blocker / "home"), "MLFLOW_TRACKING_URI": ""}, timeout=180)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert "is not a writable folder" in done.stderr and "fml onboard: error:" in done.stderr


def test_a_tracking_server_that_never_answers_fails_with_one_line(tmp_path):
    """A port that accepts connections but never replies (a hung server): a readable error, not a hang."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # connections complete in the kernel's backlog; nothing ever answers
        port = server.getsockname()[1]
        done = _fml(["models"], {"FML_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
                    timeout=90)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert f"127.0.0.1:{port}" in done.stderr


def test_two_first_runs_on_a_fresh_store_both_get_it(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = ("from core import tracking; tracking.setup_tracking(); "
            "print(tracking.ensure_experiment('fml-race-' + __import__('sys').argv[1]))")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FML_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]


def test_a_run_left_running_by_a_killed_process_is_marked_killed(fml_home):
    """SIGKILL leaves an MLflow run RUNNING; the next start marks it KILLED (never FINISHED), and leaves the
    runs of live processes alone."""
    import subprocess
    import sys

    tracking.setup_tracking()
    exp = tracking.ensure_experiment("fml-orphans")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient()
    orphan = client.create_run(exp, tags={**tracking.owner_tags(), "fml.pid": str(dead.pid)}).info.run_id
    alive = client.create_run(exp, tags=tracking.owner_tags()).info.run_id  # this test's own pid
    assert tracking.close_orphaned_runs(exp) == [orphan]
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"
