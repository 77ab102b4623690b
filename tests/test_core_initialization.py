"""The seeded meta-initialization: site-specific heads start at zero for meta-learners only."""
from __future__ import annotations

import pytest
import torch

from core.algorithms import InnerConfig, get_algorithm
from core.config import FederatedConfig, ServerConfig
from core.initialization import initial_meta, initial_model
from core.learner import MetaLearner
from data_adapters.digits import DigitsData
from verticals.digits import prepare

HEAD = ("4.weight", "4.bias")


@pytest.fixture(scope="module")
def problem():
    return prepare(DigitsData(train_sites=6, validation_sites=1, test_sites=1), seed=0)


def test_digits_head_is_site_specific(problem) -> None:
    assert problem.site_specific == HEAD


@pytest.mark.parametrize("name", ["fomaml", "maml", "reptile", "perfedavg", "metasgd"])
def test_meta_learners_start_the_head_at_zero(problem, name: str) -> None:
    meta = initial_meta(problem, get_algorithm(name), InnerConfig(), seed=4)
    baseline = initial_meta(problem, get_algorithm("fedavg"), InnerConfig(), seed=4)
    for k in HEAD:
        assert torch.count_nonzero(meta[k]) == 0
        assert torch.count_nonzero(baseline[k]) > 0  # FedAvg keeps the default initialization
    for k in ("0.weight", "2.weight"):
        assert torch.equal(meta[k], baseline[k])  # same seed, same body


def test_meta_learner_uses_the_same_initialization(problem) -> None:
    learner = MetaLearner(problem, "fomaml", InnerConfig(), FederatedConfig(rounds=1), ServerConfig("adam", 1e-3), seed=4)
    expected = initial_meta(problem, get_algorithm("fomaml"), InnerConfig(), seed=4)
    for k, v in learner.meta_params().items():
        assert torch.equal(v, expected[k])


def test_unknown_site_specific_name_is_a_clear_error(problem, monkeypatch) -> None:
    monkeypatch.setattr(problem, "site_specific", ("head.weight",))
    with pytest.raises(ValueError, match=r"'head\.weight'.*not parameters"):
        initial_model(problem, get_algorithm("fomaml"), seed=0)
