"""The Lightning ``MetaLearner``: resume determinism, rounds, validation logging (issue 3, test 6)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.adapt import adapt
from core.algorithms import InnerConfig, split_meta
from core.config import FederatedConfig, ServerConfig
from core.learner import MetaLearner, fit_meta_learner
from core.problem import SupervisedProblem
from data_adapters.sine import SineData
from verticals.sine import prepare


N = 6  # rounds before the interruption; resumed to 2N


@pytest.fixture(scope="module")
def problem() -> SupervisedProblem:
    return prepare(SineData(train_sites=12, validation_sites=3, test_sites=2, points_per_site=40), seed=0)


def validate_on(problem: SupervisedProblem):
    def validate(model, meta) -> dict[str, float]:
        loss_fn = problem.loss_fn(model)
        params, lrs = split_meta(meta)  # meta holds Meta-SGD's inner_lr/* step sizes too
        scores = []
        for i, site in enumerate(problem.federation.role("validation")):
            task = problem.few_shot_task(model, site, 5, torch.Generator().manual_seed(i))
            scores.append(task.score(adapt(loss_fn, params, task.support(params), 1, 0.01, lrs=lrs))["mse"])
        return {"mse": sum(scores) / len(scores)}

    return validate


def make_learner(problem: SupervisedProblem, algorithm: str, rounds: int, server: str = "adam", **fed) -> MetaLearner:
    fed_cfg = FederatedConfig(rounds=rounds, clients_per_round=4, val_every=4, **fed)
    return MetaLearner(problem, algorithm, InnerConfig(steps=2, lr=0.01), fed_cfg, ServerConfig(server, 1e-2),
                       seed=3, validate=validate_on(problem))


@pytest.mark.parametrize("algorithm,server,dp", [("fomaml", "adam", {}), ("metasgd", "yogi", {}),
                                                  ("fomaml", "adam", {"dp_clip": 0.5, "dp_noise": 0.8})])
def test_resumed_run_equals_uninterrupted_run(problem, tmp_path: Path, algorithm: str, server: str, dp: dict) -> None:
    full = make_learner(problem, algorithm, 2 * N, server, **dp)
    fit_meta_learner(full, progress=False)

    first = make_learner(problem, algorithm, N, server, **dp)
    fit_meta_learner(first, progress=False, checkpoint_dir=str(tmp_path))
    last = tmp_path / "last.ckpt"
    assert last.exists(), sorted(p.name for p in tmp_path.iterdir())
    resumed = make_learner(problem, algorithm, 2 * N, server, **dp)
    trainer = fit_meta_learner(resumed, progress=False, resume_from=str(last))
    assert trainer.global_step == 2 * N  # also the round count the DP accountant charges

    a, b, mid = full.meta_params(), resumed.meta_params(), first.meta_params()
    assert a.keys() == b.keys()
    if algorithm == "metasgd":
        assert any(k.startswith("inner_lr/") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=lambda m: f"{k}: {m}")
    assert any(not torch.equal(a[k], mid[k]) for k in a)  # the second half did train


def test_same_seed_same_run_and_other_seed_differs(problem) -> None:
    runs = []
    for seed in (3, 3, 4):
        learner = make_learner(problem, "reptile", 3)
        learner.seed = seed
        fit_meta_learner(learner, progress=False)
        runs.append(learner.meta_params())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_monitored_run_logs_validation_and_restores_best(problem, tmp_path: Path) -> None:
    learner = make_learner(problem, "fomaml", 8)
    trainer = fit_meta_learner(learner, progress=False, checkpoint_dir=str(tmp_path), monitor="val/mse", mode="min")
    assert "val/mse" in trainer.callback_metrics
    best = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(best) == 1
    state = torch.load(best[0], map_location="cpu", weights_only=False)["state_dict"]
    for k, v in learner.state_dict().items():
        assert torch.equal(state[k], v), k


def test_run_round_with_fedavg_sgd1_is_average_of_local_models(problem, monkeypatch) -> None:
    """Through the learner itself: one FedAvg round moves the model to the average local model."""
    learner = make_learner(problem, "fedavg", 1, server="sgd")
    learner.server = ServerConfig("sgd", 1.0)
    before = {k: v.clone() for k, v in learner.meta_params().items()}
    drawn = []
    draw = problem.train_episode

    def recording(site_id, meta, gen):
        drawn.append(draw(site_id, meta, gen))
        return drawn[-1]

    monkeypatch.setattr(problem, "train_episode", recording)
    fit_meta_learner(learner, progress=False)
    assert len(drawn) == 4 and len({e.site_id for e in drawn}) == 4
    locals_ = []
    for ep in drawn:
        both = tuple(torch.cat([s, q]) for s, q in zip(ep.support, ep.query))
        locals_.append(adapt(learner.loss_fn, before, both, 2, 0.01))
    after = learner.meta_params()
    for k in before:
        torch.testing.assert_close(after[k], sum(p[k] for p in locals_) / len(locals_), atol=1e-6, rtol=1e-5)


def test_a_diverged_round_stops_training_with_the_last_finite_parameters(problem) -> None:
    """A NaN/inf update (too large a server step) ends meta-training at that round instead of failing the
    whole run; the kept parameters are the ones before the bad round."""
    fed = FederatedConfig(rounds=40, clients_per_round=4, val_every=20)
    learner = MetaLearner(problem, "fomaml", InnerConfig(steps=2, lr=0.01), fed, ServerConfig("sgd", 1e30), seed=3)
    fit_meta_learner(learner, progress=False)
    assert learner.diverged_at is not None and learner.diverged_at < 40
    assert all(torch.isfinite(p).all() for p in learner.meta_params().values())


@pytest.mark.parametrize("algorithm", ["fomaml-group", "metasgd-group"])
def test_step_sizes_learned_per_group_stay_tied_within_a_group_and_move_apart_across_groups(problem, algorithm) -> None:
    """The learner names the problem's groups (head, body) for the algorithm; after meta-training every tensor
    of a group still has its group's one step size, the groups' differ, and none stayed at inner.lr."""
    from core.federation.records import inner_to_config

    learner = make_learner(problem, algorithm, 8)
    groups = problem.param_groups(learner.model)
    assert learner.inner.rate_groups == tuple(tuple(v) for v in groups.values())
    assert "inner.rate_groups" not in inner_to_config(learner.inner)  # each Flower node resolves its own
    fit_meta_learner(learner, progress=False)
    _, lrs = split_meta(learner.meta_params())
    rate = {}
    for group, names in groups.items():
        values = {float(lrs[n]) for n in names}
        assert len(values) == 1, f"{group}: {values}"
        rate[group] = values.pop()
    assert rate["head"] != rate["body"] and all(r != pytest.approx(learner.inner.lr) for r in rate.values())


def test_a_run_without_a_terminal_prints_its_rounds(problem, capsys) -> None:
    """Rich draws no bar where stdout is not a terminal (a log file, CI): one line per validation instead, so a
    long run is not silent."""
    fit_meta_learner(make_learner(problem, "fomaml", 8), progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in lines] == ["round 4/8", "round 8/8"]
    assert all(": mse " in line for line in lines)
    fit_meta_learner(make_learner(problem, "fomaml", 8), progress=False)
    assert "round" not in capsys.readouterr().out
