"""``fml tune``: the Optuna study over inner lr / inner steps / server lr on validation sites, its SQLite
storage, the nested MLflow runs, the pruning callback, and the preset it writes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

import verticals
import verticals.digits as digits_vertical
from core.config import algorithm_settings
from core.vertical import VERTICALS
from pipelines.config import resolve_run_config
from pipelines.tune import PruningCallback, TuneOptions, tune, without_test_sites
from pipelines.tuned_preset import tuned_preset_text

TINY = ["--data.train-sites", "12", "--data.validation-sites", "3", "--data.test-sites", "3",
        "--fed.clients-per-round", "3", "--eval.shots", "1", "5", "--eval.steps", "0", "1", "2"]


def _digits():
    verticals.load_all()
    return VERTICALS.get("digits")


class FakeTrial:
    """An Optuna trial stand-in that records reports and prunes from the ``prune_from``-th report on."""

    def __init__(self, prune_from: int) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_from = prune_from

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.prune_from


def test_pruning_callback_reports_each_validation_and_prunes_when_told():
    trial = FakeTrial(prune_from=2)
    callback = PruningCallback(trial, "val/accuracy")
    trainer = SimpleNamespace(callback_metrics={"val/accuracy": torch.tensor(0.4)}, global_step=5)
    callback.on_validation_end(trainer, None)
    trainer.callback_metrics, trainer.global_step = {"val/accuracy": torch.tensor(float("nan"))}, 10
    callback.on_validation_end(trainer, None)  # a non-finite check is recorded, not reported
    assert trial.reports == [(pytest.approx(0.4), 5)]
    trainer.callback_metrics, trainer.global_step = {"val/accuracy": torch.tensor(0.3)}, 15
    with pytest.raises(optuna.TrialPruned, match="round 15"):
        callback.on_validation_end(trainer, None)
    assert list(callback.curve) == [5, 10, 15] and math.isnan(callback.curve[10])
    callback.on_validation_end(SimpleNamespace(callback_metrics={}, global_step=20), None)  # no check logged
    assert len(trial.reports) == 2


class UnreadableSite:
    """Stands in for a test site: any use of it fails the test."""

    def __getattribute__(self, name):
        raise AssertionError(f"tuning read a test site ({name})")

    def __len__(self):
        raise AssertionError("tuning read a test site (len)")


def test_without_test_sites_drops_the_test_role_without_touching_it():
    spec = _digits()
    cfg = resolve_run_config(spec, "quick", TINY, prog="t")
    problem = spec.build(cfg.data, cfg.seed)
    for sid in problem.federation.roles["test"]:
        problem.federation.sites[sid] = UnreadableSite()
    view = without_test_sites(problem)
    assert view.federation.roles["test"] == [] and view.federation.role("test") == []
    assert set(view.federation.sites) == set(problem.federation.roles["train"] + problem.federation.roles["validation"])
    assert len(problem.federation.roles["test"]) == 3  # the input is not mutated


def test_tune_continues_the_study_nests_runs_and_writes_a_preset_run_accepts(fml_home, tmp_path, monkeypatch):
    spec = _digits()
    build = digits_vertical.build_digits_federation

    def without_readable_test_sites(data_cfg, seed):
        fed = build(data_cfg, seed)
        for sid in fed.roles["test"]:
            fed.sites[sid] = UnreadableSite()
        return fed

    monkeypatch.setattr(digits_vertical, "build_digits_federation", without_readable_test_sites)
    cfg = resolve_run_config(spec, "quick", TINY, prog="t")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    output = tmp_path / "tuned.yaml"
    options = TuneOptions(trials=2, rounds=6, val_every=3, storage=storage, output=str(output), study_name="s")
    first = tune(spec, cfg, "quick", options, pruner=optuna.pruners.NopPruner())
    study = optuna.load_study(study_name="s", storage=storage)
    hand_set = {"inner.lr": cfg.inner.lr, "inner.steps": cfg.inner.steps, "server.lr": cfg.server.lr}
    assert len(study.trials) == 2 and study.trials[0].params == hand_set  # the hand-set setting is trial 0
    assert first.hand_set_value == study.trials[0].value
    assert all(t.intermediate_values for t in study.trials)  # each trial reported its validation curve
    # a second call continues the study (and its parent run); a pruner that always prunes prunes the new trial
    second = tune(spec, cfg, "quick", TuneOptions(**{**vars(options), "trials": 1}),
                  pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 3 and study.trials[2].state == optuna.trial.TrialState.PRUNED
    assert second.parent_run_id == first.parent_run_id and second.states == {"COMPLETE": 2, "PRUNED": 1}
    assert second.best_value == max(t.value for t in study.trials[:2])
    # MLflow: one parent run, one nested run per trial with its settings and validation curve
    uri = f"sqlite:///{fml_home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fml-digits-tune")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.parent_run_id]
    assert {r.info.run_id for r in runs} == {first.parent_run_id} | {r.info.run_id for r in children}
    assert sorted(r.data.tags["optuna.state"] for r in children) == ["COMPLETE", "COMPLETE", "PRUNED"]
    for run in children:
        assert float(run.data.params["inner.lr"]) > 0 and run.info.status == "FINISHED"
        assert client.get_metric_history(run.info.run_id, "fomaml-val/accuracy")
    # the preset: the tuned algorithm's best settings, the run options given, the FedAvg baseline untouched
    tuned = resolve_run_config(spec, str(output), [], prog="t")
    assert tuned.algorithms == ["fomaml"] and tuned.data.train_sites == 12 and tuned.fed.rounds == cfg.fed.rounds
    best = algorithm_settings(tuned, "fomaml")
    assert (best.inner.lr, best.inner.steps, best.server.lr) == (
        second.best_params["inner.lr"], second.best_params["inner.steps"], second.best_params["server.lr"])
    assert algorithm_settings(tuned, "fedavg") == algorithm_settings(cfg, "fedavg")


def test_tuned_preset_keeps_baseline_overrides_and_drops_untrained_algorithms():
    spec = _digits()
    cfg = resolve_run_config(spec, "quick", ["--algorithm-overrides", "maml:server.lr=0.1", "fomaml:inner.lr=0.2",
                                             "fomaml:inner.weight_decay=0.01", "fedavg:inner.steps=3"], prog="t")
    params = {"inner.lr": 0.03, "inner.steps": 4, "server.lr": 0.002}
    path = spec.presets_dir.parent / "never-written.yaml"
    text = tuned_preset_text(spec, "quick", cfg, "fomaml", params, header="a note")
    assert text.startswith("# a note\n") and not path.exists()
    import yaml

    written = yaml.safe_load(text)
    assert written["algorithm_overrides"] == ["fomaml:inner.weight_decay=0.01", "fedavg:inner.steps=3",
                                              "fomaml:inner.lr=0.03", "fomaml:inner.steps=4", "fomaml:server.lr=0.002"]
    assert written["fed"]["rounds"] == 150  # the preset's own values, not the trials' rounds


def test_cli_refuses_tuning_the_baseline_and_a_missing_preset_file(fml_home, capsys, tmp_path):
    from pipelines.cli import main

    assert main(["tune", "digits", "--algorithm", "fedavg", *TINY]) == 1
    assert "not 'fedavg'" in capsys.readouterr().err
    assert main(["evaluate", "digits", "--preset", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_tune_searches_the_inner_loops_parameter_group_and_the_preset_carries_it(fml_home, tmp_path):
    """``--inner-groups all body``: each trial trains with the group it drew (ANIL / BOIL searched on validation
    sites like the step sizes), the hand-set trial keeps the run's own group, and the preset runs the best one."""
    from pipelines.tune import SearchSpace, trial_config

    spec = _digits()
    cfg = resolve_run_config(spec, "quick", TINY, prog="t")
    space = SearchSpace((cfg.inner.lr, cfg.inner.lr), (cfg.inner.steps, cfg.inner.steps),
                        (cfg.server.lr, cfg.server.lr), inner_groups=("all", "body"))
    options = TuneOptions(trials=3, rounds=4, val_every=2, storage=f"sqlite:///{tmp_path / 'g.db'}",
                          output=str(tmp_path / "g.yaml"), study_name="g", space=space)
    result = tune(spec, cfg, "quick", options, pruner=optuna.pruners.NopPruner())
    study = optuna.load_study(study_name="g", storage=options.storage)
    assert study.trials[0].params["inner.group"] == "all"  # the hand-set trial
    assert {t.params["inner.group"] for t in study.trials} <= {"all", "body"}
    assert algorithm_settings(trial_config(cfg, "fomaml", {"inner.group": "body"}, 4, 2), "fomaml").inner.group == "body"
    tuned = resolve_run_config(spec, str(tmp_path / "g.yaml"), [], prog="t")
    assert algorithm_settings(tuned, "fomaml").inner.group == result.best_params["inner.group"]
    assert algorithm_settings(tuned, "fedavg").inner.group == "all"  # the baseline keeps every weight


def test_tune_refuses_an_unknown_group_and_reptile_on_a_group_of_a_random_model(fml_home, tmp_path):
    from pipelines.tune import SearchSpace

    spec = _digits()
    cfg = resolve_run_config(spec, "quick", TINY, prog="t")
    with pytest.raises(ValueError, match="--inner-groups all neck: name each group once"):
        SearchSpace((0.1, 1.0), (1, 2), (0.1, 1.0), inner_groups=("all", "neck")).check()
    space = SearchSpace((0.1, 1.0), (1, 2), (0.1, 1.0), inner_groups=("all", "head"))
    options = TuneOptions(algorithm="reptile", trials=1, rounds=2, val_every=1, storage=f"sqlite:///{tmp_path / 'r.db'}",
                          output=str(tmp_path / "r.yaml"), study_name="r", space=space)
    with pytest.raises(ValueError, match="reptile with inner.group 'head'.*--warm-start"):
        tune(spec, cfg, "quick", options)
    assert not (tmp_path / "r.db").exists()  # refused before the study exists
