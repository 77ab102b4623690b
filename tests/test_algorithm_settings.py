"""Per-algorithm settings (``algorithm_overrides``) and the warm start from FedAvg."""
from __future__ import annotations

import pytest
import torch

from core.algorithms import InnerConfig
from core.config import FederatedConfig, RunConfig, ServerConfig, algorithm_settings, check_algorithm_overrides
from core.learner import MetaLearner
from data_adapters.digits import DigitsData
from verticals.digits import prepare


def test_overrides_apply_to_their_algorithm_only() -> None:
    cfg = RunConfig(data=None, baseline_lr=0.2, algorithm_overrides=[
        "reptile:server.optimizer=sgd", "reptile:server.lr=0.5", "reptile:inner.steps=10", "fedavg:inner.steps=3"])
    reptile = algorithm_settings(cfg, "reptile")
    assert reptile.server == ServerConfig("sgd", 0.5) and reptile.inner == InnerConfig(steps=10, lr=0.05)
    assert algorithm_settings(cfg, "fomaml").server == ServerConfig("adam", 1e-3)  # the run's
    assert algorithm_settings(cfg, "fomaml").inner == cfg.inner
    fedavg = algorithm_settings(cfg, "fedavg")  # baseline_server and baseline_lr, then its override
    assert fedavg.server == ServerConfig("sgd", 1.0) and fedavg.inner == InnerConfig(steps=3, lr=0.2)


@pytest.mark.parametrize("overrides,message", [
    (["reptile:server.lrr=1"], r"override for 'reptile' \(server.lrr=1\): Key 'lrr' not in 'ServerConfig'"),
    (["reptile:inner.steps=many"], r"'many' of type 'str' could not be converted to Integer"),
    (["reptile-server.lr=1"], r"must read ALGORITHM:KEY=VALUE"),
    (["reptile:fed.rounds=1"], r"KEY under inner. or server."),
    (["maml:server.lr=1"], r"override for 'maml', but this run trains fedavg, reptile"),
    (["reptile:server.optimizer=sgdd"], r"sgdd"),
    (["reptile:inner.meta_dropout_at=hidden", "reptile:inner.lr=-1"],
     r"invalid algorithm override\(s\): reptile:inner.lr -1.0 \(must be > 0\); "
     r"reptile:inner.meta_dropout_at hidden \(must be input, features\)"),
    (["reptile:inner.meta_dropout=1.5"], r"reptile:inner.meta_dropout 1.5 \(must be in \[0, 1\)\)"),
])
def test_bad_overrides_are_clear_errors(overrides: list[str], message: str) -> None:
    with pytest.raises((ValueError, KeyError), match=message):
        check_algorithm_overrides(RunConfig(data=None, algorithm_overrides=overrides), ["fedavg", "reptile"])


def test_warm_start_begins_at_the_given_model_with_the_site_head_at_zero() -> None:
    problem = prepare(DigitsData(train_sites=6, validation_sites=1, test_sites=1), seed=0)
    fed = FederatedConfig(rounds=1, clients_per_round=2)
    fedavg = MetaLearner(problem, "fedavg", InnerConfig(), fed, ServerConfig("sgd", 1.0), seed=0)
    server = torch.optim.SGD(fedavg.parameters(), 1.0)
    fedavg.optimizers = lambda: server  # run_round without a Trainer
    fedavg.run_round(0)  # a trained FedAvg model differs from every seeded initialization
    start = fedavg.meta_params()
    warm = MetaLearner(problem, "fomaml", InnerConfig(), fed, ServerConfig("adam", 1e-3), seed=5, start=start)
    cold = MetaLearner(problem, "fomaml", InnerConfig(), fed, ServerConfig("adam", 1e-3), seed=5)
    for name, value in warm.meta_params().items():
        if name in problem.site_specific:
            assert torch.count_nonzero(value) == 0
        else:
            assert torch.equal(value, start[name]) and not torch.equal(value, cold.meta_params()[name])
    with pytest.raises(ValueError, match="do not match the model"):
        MetaLearner(problem, "fomaml", InnerConfig(), fed, ServerConfig("adam", 1e-3), seed=5,
                    start={"0.weight": start["0.weight"]})


def test_baseline_rounds_apply_to_fedavg_only() -> None:
    cfg = RunConfig(data=None, baseline_rounds=7)
    assert algorithm_settings(cfg, "fedavg").rounds == 7
    assert algorithm_settings(cfg, "fomaml").rounds == cfg.fed.rounds != 7
    assert algorithm_settings(RunConfig(data=None), "fedavg").rounds == RunConfig(data=None).fed.rounds


def test_bad_baseline_rounds_is_refused_naming_the_option() -> None:
    from core.config import check_run_config

    with pytest.raises(ValueError, match=r"--baseline-rounds 0 \(must be >= 1\)"):
        check_run_config(RunConfig(data=None, baseline_rounds=0))


def test_fedavg_trains_baseline_rounds_and_the_meta_learner_fed_rounds(tmp_path, fml_home) -> None:
    """The warm-started meta-learner starts from the longer-trained FedAvg model and trains its own rounds."""
    import verticals
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.run import run_pipeline

    verticals.load_all()
    spec = VERTICALS.get("sine")
    cfg = load_preset(spec, "quick")
    cfg.data.train_sites, cfg.data.validation_sites, cfg.data.test_sites = 8, 1, 1
    cfg.algorithms, cfg.warm_start, cfg.baseline_rounds = ["fomaml"], True, 12
    cfg.fed.rounds, cfg.fed.val_every, cfg.fed.clients_per_round = 4, 4, 4
    cfg.eval.shots, cfg.eval.steps, cfg.eval.draws, cfg.eval.select_draws = [5], [0], 1, 1
    cfg.tracking.register, cfg.output_dir = False, str(tmp_path / "out")
    run_pipeline(spec, cfg, progress=False)
    steps = {name: torch.load(tmp_path / "out" / "checkpoints" / name / "last.ckpt", map_location="cpu",
                              weights_only=False)["global_step"] for name in ("fedavg", "fomaml")}
    assert steps == {"fedavg": 12, "fomaml": 4}
