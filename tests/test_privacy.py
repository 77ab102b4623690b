"""Site-level DP-FedAvg in the in-process engine: clipping, calibrated noise, the accountant (resume: test_core_learner)."""
from __future__ import annotations

import math

import pytest
import torch

from core.algorithms import InnerConfig
from core.config import FederatedConfig, ServerConfig
from core.learner import MetaLearner
from core.privacy import clip_by_norm, epsilon, noisy_mean
from data_adapters.sine import SineData
from verticals.sine import prepare


def test_clip_bounds_each_clients_norm_over_all_tensors() -> None:
    g = torch.Generator().manual_seed(0)
    stacked = {"w": torch.randn(4, 3, 5, generator=g) * torch.tensor([0.01, 1, 10, 100]).reshape(4, 1, 1),
               "b": torch.randn(4, 5, generator=g)}
    clipped = clip_by_norm(stacked, 2.0)
    norms = torch.cat([v.reshape(4, -1) for v in clipped.values()], 1).norm(dim=1)
    before = torch.cat([v.reshape(4, -1) for v in stacked.values()], 1).norm(dim=1)
    assert torch.all(norms <= 2.0 + 1e-5)
    small = before <= 2.0
    assert torch.allclose(norms[small], before[small])  # inside the ball: untouched
    assert torch.allclose(norms[~small], torch.full_like(norms[~small], 2.0))
    cos = torch.nn.functional.cosine_similarity(clipped["w"].reshape(4, -1), stacked["w"].reshape(4, -1))
    assert torch.allclose(cos, torch.ones(4))  # direction kept


def test_noise_is_calibrated_to_clip_and_fixed_denominator() -> None:
    clipped = {"w": torch.ones(3, 200_000)}
    out = noisy_mean(clipped, clients_per_round=6, noise_multiplier=1.5, clip=2.0, gen=torch.Generator().manual_seed(1))
    noise = out["w"] - 3.0 / 6  # sum over the 3 that answered / the 6 sampled
    assert abs(float(noise.mean())) < 0.01
    assert abs(float(noise.std()) - 1.5 * 2.0 / 6) < 0.005


def test_epsilon_behaves_like_an_accountant() -> None:
    base = epsilon(rounds=200, sampling_rate=0.1, noise_multiplier=1.0, delta=1e-5)
    assert 0 < base < math.inf
    assert epsilon(400, 0.1, 1.0, 1e-5) > base  # more rounds spend more
    assert epsilon(200, 0.1, 2.0, 1e-5) < base  # more noise spends less
    assert epsilon(200, 0.05, 1.0, 1e-5) < base  # rarer sampling spends less
    assert epsilon(200, 0.1, 0.0, 1e-5) == math.inf and epsilon(0, 0.1, 1.0, 1e-5) == 0.0


def test_bad_dp_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="dp_noise=1.0 needs fed.dp_clip > 0"):
        FederatedConfig(dp_noise=1.0)
    with pytest.raises(ValueError, match="needs fed.aggregation=mean"):
        FederatedConfig(dp_clip=1.0, aggregation="median")


def test_dp_rounds_are_seeded_and_noisy() -> None:
    problem = prepare(SineData(train_sites=12, validation_sites=0, test_sites=2, points_per_site=40), seed=0)

    def learner(**dp) -> MetaLearner:
        fed = FederatedConfig(rounds=4, clients_per_round=4, **dp)
        mod = MetaLearner(problem, "fomaml", InnerConfig(steps=2, lr=0.01), fed, ServerConfig("sgd", 0.1), seed=3)
        server = mod.configure_optimizers()
        mod.optimizers = lambda: server  # rounds without a Trainer
        for r in range(4):
            mod.run_round(r)
        return mod

    noisy, again = learner(dp_clip=0.5, dp_noise=1.0), learner(dp_clip=0.5, dp_noise=1.0)
    clipped_only, plain = learner(dp_clip=0.5), learner()
    for k, v in noisy.meta_params().items():
        assert torch.equal(v, again.meta_params()[k])  # the noise is seeded by (seed, round)
    assert any(not torch.allclose(v, clipped_only.meta_params()[k]) for k, v in noisy.meta_params().items())
    assert any(not torch.allclose(v, plain.meta_params()[k]) for k, v in clipped_only.meta_params().items())


def test_core_rule_noise_is_secret_and_has_the_dp_fedavg_scale():
    """The deployed core rule draws DP noise from the OS (two rules, same seed: different noise) with
    std noise_multiplier * clip / clients_per_round per coordinate; without a generator it is the seeded one."""
    import types

    pytest.importorskip("flwr")
    from core.federation import records as R
    from core.federation.strategies import CoreRule, make_rule

    fed = types.SimpleNamespace(dp_clip=1.0, dp_noise=2.0, clients_per_round=4, aggregation="mean",
                                weighting="uniform")
    run = types.SimpleNamespace(fed=fed, server=types.SimpleNamespace(optimizer="sgd", lr=1.0), seed=7,
                                flower=types.SimpleNamespace(strategy="core", dp_noise=0.0))
    meta = {"w": torch.zeros(20_000)}
    accepted = [types.SimpleNamespace(record=R.params_to_record({"w": torch.zeros(20_000)}),
                                      metrics={R.NUM_EXAMPLES: 5}) for _ in range(4)]
    first, second = (make_rule(run, meta).aggregate(1, accepted)["w"] for _ in range(2))
    assert not torch.allclose(first, second)
    assert float(first.std()) == pytest.approx(2.0 * 1.0 / 4, rel=0.03)
    seeded = [CoreRule(meta, fed, run.server, 7).aggregate(1, accepted)["w"] for _ in range(2)]
    torch.testing.assert_close(seeded[0], seeded[1])
