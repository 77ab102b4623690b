"""The FML round on Flower's simulation engine gives the in-process engine's meta-initialization.

R1 (``verticals/digits``), FO-MAML, fixed seed, 3 rounds: Flower simulation (Ray, one ClientApp per
site) vs ``MetaLearner.run_round``. Also: Flower's own FedAvg strategy on ``init - direction`` replies is
the core FedAvg (server SGD at lr 1), and the update checks that keep bad updates out.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")

from core.federation import records as R  # noqa: E402
from core.learner import MetaLearner  # noqa: E402
from pipelines.federate_node import data_config, vertical_spec  # noqa: E402
from pipelines.federate_server import resolve_run, simulate  # noqa: E402

pytestmark = pytest.mark.slow  # real processes / end-to-end runs: `-m "not slow"` skips them

DATA = {"train_sites": 12, "validation_sites": 1, "test_sites": 1}
SEED = 3


def in_process(config: dict, rounds: int, vectorize: bool = True) -> dict[str, torch.Tensor]:
    """``rounds`` rounds of ``MetaLearner.run_round`` (the in-process engine) with the same settings."""
    run = resolve_run(config)
    spec = vertical_spec("digits")
    problem = spec.prepare(data_config(spec, DATA), run.seed)
    learner = MetaLearner(problem, run.algorithm, run.inner, dataclasses.replace(run.fed, vectorize=vectorize),
                          run.server, run.seed)
    optimizer = learner.configure_optimizers()
    learner.optimizers = lambda *a, **k: optimizer  # run_round outside a Trainer
    for r in range(rounds):
        learner.run_round(r)
    return learner.meta_params()


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    """MLflow store and artifacts in tmp_path (the ServerApp logs each run)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FML_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_three_fomaml_rounds_on_flower_simulation_equal_in_process(tracking):
    config = {"vertical": "digits", "preset": "quick", "algorithm": "fomaml", "data": DATA, "seed": SEED,
              "fed.rounds": 3, "fed.clients_per_round": 5, "flower.finish": False, "flower.eval_roles": "validation",
              "flower.eval_draws": 1}
    result = simulate(config, num_nodes=13)  # 12 training sites + 1 validation site
    reference = in_process(config, rounds=3)
    assert result.meta.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(result.meta[name], reference[name], rtol=1e-5, atol=1e-6)
    assert [len(r.accepted) for r in result.rounds] == [5, 5, 5]
    assert all(r.applied and not r.rejected and not r.lost for r in result.rounds)
    assert any(float((result.meta[k] - in_process(config, rounds=0)[k]).abs().max()) > 0 for k in reference)
    assert "val/accuracy/steps5" in result.evaluations[3]  # the validation node adapted and scored


def test_flower_fedavg_strategy_equals_core_fedavg(tracking):
    config = {"vertical": "digits", "preset": "quick", "algorithm": "fedavg", "data": DATA, "seed": SEED,
              "fed.rounds": 2, "fed.clients_per_round": 4, "flower.finish": False, "flower.eval_roles": ",",
              "flower.strategy": "fedavg"}
    result = simulate(config, num_nodes=12)
    reference = in_process(config, rounds=2)  # fedavg's server: SGD at lr 1 (baseline_server)
    for name in reference:
        torch.testing.assert_close(result.meta[name], reference[name], rtol=1e-5, atol=1e-6)


def test_a_flower_run_averages_the_last_validated_rounds_as_fml_run_does(tracking):
    """``eval.checkpoint_average`` (the robotics presets' default) keeps the same mean on Flower as in-process."""
    config = {"vertical": "digits", "preset": "quick", "algorithm": "fomaml", "data": DATA, "seed": SEED,
              "fed.rounds": 4, "fed.val_every": 2, "eval.checkpoint_average": 2, "fed.clients_per_round": 4,
              "flower.finish": False, "flower.eval_roles": ","}
    result = simulate(config, num_nodes=13)
    at_2, at_4 = in_process(config, rounds=2), in_process(config, rounds=4)
    for name in at_4:
        torch.testing.assert_close(result.meta[name], (at_2[name] + at_4[name]) / 2, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(result.meta[k], at_4[k]) for k in at_4)  # not the last round
    assert [e["rounds"] for e in result.events if e["kind"] == "rounds_averaged"] == [[2, 4]] == [result.kept_rounds]


def test_dp_fedavg_rounds_on_flower_clip_like_in_process_and_draw_secret_noise(tracking):
    """DP-FedAvg (fed.dp_clip / fed.dp_noise) clips on the Flower server exactly as in-process; its noise is
    NOT the in-process run's seeded noise (every node knows the seed and could subtract it)."""
    config = {"vertical": "digits", "preset": "quick", "algorithm": "fomaml", "data": DATA, "seed": SEED,
              "fed.rounds": 2, "fed.clients_per_round": 4, "fed.dp_clip": 0.5, "fed.dp_noise": 0.0,
              "flower.finish": False, "flower.eval_roles": ","}
    clipped = simulate(config, num_nodes=13)
    reference = in_process(config, rounds=2)
    for name in reference:
        torch.testing.assert_close(clipped.meta[name], reference[name], rtol=1e-5, atol=1e-6)
    noised = simulate({**config, "fed.dp_noise": 0.7}, num_nodes=13)
    seeded = in_process({**config, "fed.dp_noise": 0.7}, rounds=2)
    assert any(not torch.allclose(noised.meta[k], reference[k]) for k in reference)  # the noise is really there
    assert any(not torch.allclose(noised.meta[k], seeded[k], atol=1e-4) for k in seeded)  # ... and not the seed's


def test_dp_fedavg_needs_the_core_rule():
    """A Flower strategy cannot run DP-FedAvg (it has flower.dp_*); SecAgg+ can (tests/test_flower_secagg_dp.py)."""
    from pipelines.config import ConfigError

    config = {"vertical": "digits", "preset": "quick", "data": DATA, "fed.dp_clip": 0.5, "fed.dp_noise": 1.0}
    with pytest.raises(ConfigError, match="needs flower.strategy=core"):
        resolve_run({**config, "flower.strategy": "fedavg"})
    assert resolve_run({**config, "flower.secagg": True}).flower.secagg


def test_update_checks_name_the_problem():
    from flwr.app import ArrayRecord

    meta = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    expected = R.shapes_of(meta)
    assert R.check_update(ArrayRecord(meta), expected) is None
    assert "NaN" in R.check_update(ArrayRecord({"w": torch.full((2, 3), float("nan")), "b": torch.zeros(2)}), expected)
    assert "shape [3, 2]" in R.check_update(ArrayRecord({"w": torch.zeros(3, 2), "b": torch.zeros(2)}), expected)
    assert "missing ['b']" in R.check_update(ArrayRecord({"w": torch.zeros(2, 3)}), expected)
    assert "dtype" in R.check_update(ArrayRecord({"w": torch.zeros(2, 3, dtype=torch.float64),
                                                  "b": torch.zeros(2)}), expected)
    assert R.check_metrics({"weight": 0.0}) is not None and R.check_metrics({"weight": 2.0}) is None


def test_finish_hook_runs_the_heldout_protocol_for_fedavg(tracking):
    """The Flower finish hook shares ``fml run``'s stages 4-7: for FedAvg it scores fedavg and fedavg+ft
    (an MLflow-safe key), logs the tables and registers the fine-tuned FedAvg model."""
    import types

    import mlflow

    from core import tracking as fml_tracking
    from pipelines.federate_server import finish_federated_run

    config = {"vertical": "digits", "preset": "quick", "algorithm": "fedavg", "data": DATA, "seed": SEED,
              "fed.rounds": 2, "eval.shots": [1], "eval.steps": [0, 1], "eval.draws": 1, "eval.select_draws": 1,
              "fed.dp_clip": 5.0, "fed.dp_noise": 1.0}
    run = resolve_run(config)
    meta = in_process(config, rounds=2)
    rounds = [types.SimpleNamespace(applied=True), types.SimpleNamespace(applied=True)]
    fml_tracking.setup_tracking()
    with mlflow.start_run(experiment_id=fml_tracking.ensure_experiment("flower-finish")) as active:
        out = finish_federated_run(run, types.SimpleNamespace(meta=meta, rounds=rounds, kept_rounds=[1, 2],
                                                              kept_by="average"),
                                   types.SimpleNamespace(run_id=active.info.run_id))
    logged = mlflow.get_run(active.info.run_id)
    assert "test/accuracy/fedavg-ft/shots1_steps1" in logged.data.metrics
    assert "test/accuracy/fedavg/shots1_steps0" in logged.data.metrics
    assert set(out["summary"]["method"]) >= {"local", "fedavg", "fedavg+ft"}
    assert logged.data.tags["best_algorithm"] == "fedavg+ft"
    assert out["registered"]["name"] == "fml-digits" and out["registered"]["alias"] == "champion"
    assert logged.data.tags["fedavg.kept_rounds"] == "1, 2"  # and the model card says so
    card = mlflow.MlflowClient().get_model_version("fml-digits", out["registered"]["version"]).description
    assert "- `fedavg`: the mean of rounds 1, 2" in card
    loaded = fml_tracking.load_meta_init(out["model_uri"])
    assert loaded.info["engine"] == "flower" and loaded.info["algorithm"] == "fedavg+ft"
    epsilon = logged.data.metrics["privacy/epsilon_fedavg"]  # 2 DP rounds of 10 sites out of 12
    assert 0 < epsilon < float("inf") and loaded.info["privacy"]["epsilon"] == pytest.approx(epsilon)
    for name, value in meta.items():
        torch.testing.assert_close(loaded.meta[name], value)
