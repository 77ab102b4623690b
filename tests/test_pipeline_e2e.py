"""End to end: `fml run` -> registry -> `fml onboard` in a separate process, on the embedded store and
on a real MLflow tracking server started on a loopback port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # real processes / end-to-end runs: `-m "not slow"` skips them

TINY = ["--data.train-sites", "16", "--data.validation-sites", "3", "--data.test-sites", "3",
        "--fed.rounds", "20", "--fed.val-every", "10", "--fed.clients-per-round", "4",
        "--eval.shots", "1", "5", "--eval.steps", "0", "1", "5", "--eval.draws", "2",
        "--eval.select-draws", "1", "--eval.lr-grid", "0.1", "0.3", "--algorithms", "fomaml", "reptile",
        "--algorithm-overrides", "reptile:server.optimizer=sgd", "reptile:server.lr=0.5", "--warm-start",
        "--fed.dp-clip", "10", "--fed.dp-noise", "0.01"]


def _env(home: Path, tracking_uri: str | None = None) -> dict[str, str]:
    env = {**os.environ, "FML_HOME": str(home), "PYTHONPATH": str(REPO_ROOT), "FML_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def fml(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _run_and_onboard(tmp_path: Path, env: dict[str, str]) -> MlflowClient:
    run = fml(["run", "digits", "--preset", "quick", *TINY, "--output-dir", str(tmp_path / "out")], env, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "registered fml-digits v1 as @champion" in run.stdout
    # the paired table says which way is better and marks intervals that exclude 0
    assert "method - fedavg+ft, higher is better; * the 95% interval excludes 0" in " ".join(run.stdout.split())
    out = tmp_path / "out"
    import torch

    # reptile trained with its own server optimizer (the override), fomaml with the run's (Adam)
    optimizers = {a: torch.load(out / "checkpoints" / a / "last.ckpt", weights_only=False)["optimizer_states"][0]
                  for a in ("reptile", "fomaml")}
    assert "momentum" in optimizers["reptile"]["param_groups"][0] and optimizers["reptile"]["param_groups"][0]["lr"] == 0.5
    assert "betas" in optimizers["fomaml"]["param_groups"][0]
    for name in ["evaluation_summary.csv", "paired_differences.csv", "adaptation_vs_steps.png",
                 "adaptation_vs_shots.png", "site_shift.csv"]:
        assert (out / name).stat().st_size > 0, name
    onboard = fml(["onboard", "digits", "--site", "clinic-x", "--register"], env, tmp_path)
    assert onboard.returncode == 0, onboard.stdout[-3000:] + onboard.stderr[-3000:]
    assert "after adaptation" in onboard.stdout
    uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(env['FML_HOME']) / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)  # explicit: other tests set global URIs


def _check_registry(client: MlflowClient) -> None:
    champion = client.get_model_version_by_alias("fml-digits", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["algorithm"] in {"fomaml", "reptile", "fedavg+ft"}
    bundle = champion.tags["candidates"].split(",")
    assert "fedavg+ft" in bundle and len(bundle) == 2 and champion.tags["algorithm"] == bundle[0]
    assert float(champion.tags["headline_value"]) > 0.2  # better than chance on 5-way tasks
    assert int(champion.tags["adapt_steps"]) in {1, 5}
    site_model = client.get_model_version_by_alias("fml-digits-site-clinic-x", "champion")
    assert site_model.tags["source_model"] == "fml-digits"
    assert site_model.tags["source_version"] == "1", site_model.tags
    assert site_model.tags["site_id"] == "clinic-x" and site_model.tags["adaptation_diverged"] == "false"
    run = client.get_run(champion.tags["run_id"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "dataset_fingerprint.json", "evaluation"} <= arts
    assert any(k.startswith("fomaml-train/") for k in run.data.metrics)
    assert any(k.startswith("fedavg-val/") for k in run.data.metrics)
    epsilons = {k: v for k, v in run.data.metrics.items() if k.startswith("privacy/epsilon_")}
    assert set(epsilons) == {"privacy/epsilon_fedavg", "privacy/epsilon_fomaml", "privacy/epsilon_reptile"}
    trained = {name.replace("fedavg+ft", "fedavg") for name in bundle}  # the bundle's guarantee: its weakest
    assert float(champion.tags["dp_epsilon"]) == pytest.approx(max(epsilons[f"privacy/epsilon_{t}"] for t in trained),
                                                               rel=1e-3)


def test_run_then_onboard_embedded_store(tmp_path):
    env = _env(tmp_path / "home")
    client = _run_and_onboard(tmp_path, env)
    _check_registry(client)
    assert (tmp_path / "home" / "mlflow.db").exists()
    models = fml(["models"], env, tmp_path)
    assert models.returncode == 0 and "fml-digits" in models.stdout
    # a step size that overflows the weights: the site keeps its start, and nothing non-finite is registered
    wild = fml(["onboard", "digits", "--site", "clinic-y", "--lr", "1e30", "--steps", "5", "--register"], env, tmp_path)
    assert wild.returncode == 0, wild.stdout[-3000:] + wild.stderr[-3000:]
    assert "diverged (non-finite weights): the site keeps its start" in " ".join(wild.stdout.split())
    version = client.get_model_version_by_alias("fml-digits-site-clinic-y", "champion")
    assert version.tags["adaptation_diverged"] == "true" and version.tags["adapt_steps"] == "0"
    scores = client.get_run(version.run_id).data.metrics  # the registered weights are the start: the same scores
    assert scores["after/accuracy"] == scores["before/accuracy"] > 0.2


ADMIN_PASSWORD = "test-admin-Pw-7319"  # the test server's admin; never a default of serve.sh


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "FML_HOME": str(tmp_path / "server-home"), "MLFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", str(REPO_ROOT / "mlflow" / "serve.sh"), str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow server exited during start-up")
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start in 120 s")
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_run_then_onboard_real_tracking_server(tmp_path, mlflow_server, monkeypatch):
    creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    env = {**_env(tmp_path / "client-home", tracking_uri=mlflow_server), **creds}
    for key, value in creds.items():  # this process's MlflowClient reads them too
        monkeypatch.setenv(key, value)
    client = _run_and_onboard(tmp_path, env)
    _check_registry(client)
    # artifacts were served by the server, not written into the client's folder
    assert not (tmp_path / "client-home" / "artifacts").exists()
    # without credentials, or with the wrong password, nobody reads the registry or moves @champion
    for creds in ({}, {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "password1234"}):
        bare = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_USER") and
                not k.startswith("MLFLOW_TRACKING_PASS")}
        refused = fml(["models"], {**bare, **creds}, tmp_path)
        assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr[-1500:]
    # verified credentials are cached (serve.sh's MLFLOW_AUTH_CACHE_TTL), yet a password changed through the auth
    # API stops working at once: the one worker drops the cached entry
    from mlflow.server import get_app_client

    def as_user(user: str, password: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        return MlflowClient(tracking_uri=mlflow_server)

    as_user("admin", ADMIN_PASSWORD)
    get_app_client("basic-auth", tracking_uri=mlflow_server).create_user("site-a", "first-Pw-4821")
    for _ in range(2):  # the second request is answered from the cache
        as_user("site-a", "first-Pw-4821").search_experiments()
    as_user("admin", ADMIN_PASSWORD)
    get_app_client("basic-auth", tracking_uri=mlflow_server).update_user_password("site-a", "second-Pw-9377")
    with pytest.raises(MlflowException, match="401"):
        as_user("site-a", "first-Pw-4821").search_experiments()
    as_user("site-a", "second-Pw-9377").search_experiments()


def test_serve_sh_refuses_to_start_without_an_admin_password(tmp_path):
    env = {**os.environ, "FML_HOME": str(tmp_path)}
    env.pop("MLFLOW_ADMIN_PASSWORD", None)
    done = subprocess.run(["bash", str(REPO_ROOT / "mlflow" / "serve.sh"), str(_free_port())], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "set MLFLOW_ADMIN_PASSWORD" in done.stderr


def test_a_bad_vertical_is_one_line_on_stderr_from_the_real_entry_point(tmp_path):
    r = fml(["run", "no-such-vertical"], _env(tmp_path / "home"), tmp_path)
    assert r.returncode == 1 and "unknown vertical 'no-such-vertical'" in r.stderr and "digits" in r.stderr


@pytest.mark.parametrize("args,named", [
    (["onboard", "digits", "--model", "models:/fml-digits@champion"], "cannot resolve 'models:/fml-digits@champion'"),
    (["onboard", "digits", "--data", "missing.csv"], "missing.csv"),
    (["run", "digits", "--preset", "nope"], "no preset 'nope'"),
    (["run", "digits", "--algorithms", "nosuch", "--fed.rounds", "1"], "unknown algorithm 'nosuch'"),
    (["run", "digits", "--algorithms", "fomaml", "--algorithm-overrides", "maml:server.lr=1"],
     "algorithm override for 'maml', but this run trains fedavg, fomaml")])
def test_bad_inputs_are_one_line_errors(fml_home, capsys, monkeypatch, tmp_path, args, named):
    """In process (the entry point's own path is the test above): exit 1, the sentence on stderr, no model."""
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    from mlflow.tracking import MlflowClient

    if (fml_home / "mlflow.db").exists():
        assert not MlflowClient(tracking_uri=f"sqlite:///{fml_home / 'mlflow.db'}").search_registered_models()


@pytest.mark.parametrize("flags,named", [(["--fed.rounds", "-5"], "--fed.rounds -5"),
                                         (["--fed.clients-per-round", "0"], "--fed.clients-per-round 0"),
                                         (["--eval.shots", "0", "5"], "--eval.shots [0, 5]"),
                                         (["--eval.choice-folds", "1"], "--eval.choice-folds 1")])
def test_impossible_options_stop_before_any_data_or_run(fml_home, capsys, flags, named):
    """One line naming the option, exit 1, and no tracking store created (nothing half-written)."""
    from pipelines.cli import main

    assert main(["run", "sine", "--preset", "quick", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and err[0].startswith("fml run: error: invalid option")
    assert not (fml_home / "mlflow.db").exists()


def test_ctrl_c_during_meta_training_prints_one_line_and_exits_130(tmp_path):
    """Lightning turns Ctrl-C into a graceful shutdown and exit code 1; the CLI must still report it."""
    import signal

    env = _env(tmp_path / "home")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "sine", "--preset", "quick",
                             "--fed.rounds", "1000000", "--fed.val-every", "1000000", "--output-dir", str(tmp_path / "o")],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)

    def runs() -> list:
        try:
            exp = client.get_experiment_by_name("fml-sine")
            return client.search_runs([exp.experiment_id]) if exp else []
        except (MlflowException, SQLAlchemyError):  # the store is being created by the run
            return []

    deadline = time.monotonic() + 300
    while not runs() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(5)  # into meta-training
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("fml run: interrupted")
    assert runs() and all(r.info.status != "FINISHED" for r in runs())


@pytest.mark.parametrize("recipe,named", [("reinforce", "--eval.recipes reinforce: recipe 'reinforce' switches a policy-gradient"),
                                           ("context-reinforce", "--eval.recipes context-reinforce: recipe 'context-reinforce' switches")])
def test_a_recipe_that_cannot_adapt_the_model_stops_before_any_training(fml_home, capsys, recipe, named):
    """Each recipe's check runs before meta-training (it used to fail only when the evaluation adapted with it,
    after every model had trained), in one line, with no tracking store created."""
    from pipelines.cli import main

    assert main(["run", "sine", "--preset", "quick", "--eval.recipes", recipe]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert not (fml_home / "mlflow.db").exists()


def test_more_clients_per_round_than_training_sites_is_refused_before_any_run(fml_home, capsys):
    """Regression: the sampler silently capped the round at the training sites."""
    from pipelines.cli import main

    assert main(["run", "sine", "--preset", "quick", "--data.train-sites", "6", "--fed.clients-per-round", "9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fed.clients-per-round 9 exceeds the 6 training sites" in err[0]
    assert not (fml_home / "mlflow.db").exists()
