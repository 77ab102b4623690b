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
