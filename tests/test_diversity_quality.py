"""Diversity sampling over strata of site descriptors and quality weighting of client updates (issue 16, item 5)."""
from __future__ import annotations

import pytest
import torch

from core.aggregation import adaptation_quality, client_weights
from core.algorithms import InnerConfig
from core.config import FederatedConfig, RunConfig, ServerConfig, check_run_config
from core.learner import MetaLearner
from core.sampling import sample_clients
from core.site_descriptors import site_strata
from core.seeds import round_generator
from data_adapters.digits import DigitsData, build_digits_federation
from verticals.digits import problem_for


def test_diversity_takes_one_client_per_stratum_before_any_stratum_gives_two() -> None:
    ids = [f"s{i}" for i in range(30)]
    strata = [torch.arange(0, 20), torch.arange(20, 27), torch.arange(27, 30)]  # unequal clusters
    for r in range(20):
        chosen = sample_clients(ids, [1] * 30, 3, round_generator(0, r), "diversity", strata=strata)
        members = sorted(next(c for c, s in enumerate(strata) if int(i[1:]) in s.tolist()) for i in chosen)
        assert members == [0, 1, 2] and len(set(chosen)) == 3
    many = sample_clients(ids, [1] * 30, 8, round_generator(0, 0), "diversity", strata=strata)
    assert len(set(many)) == 8
    counts = [sum(int(i[1:]) in s.tolist() for i in many) for s in strata]
    assert max(counts) - min(counts) <= 1  # round-robin: 3, 3, 2


def test_diversity_is_seeded_and_needs_strata() -> None:
    ids, strata = [f"s{i}" for i in range(10)], [torch.arange(5), torch.arange(5, 10)]
    a = sample_clients(ids, [1] * 10, 4, round_generator(1, 7), "diversity", strata=strata)
    assert a == sample_clients(ids, [1] * 10, 4, round_generator(1, 7), "diversity", strata=strata)
    with pytest.raises(ValueError, match="needs the training sites' strata"):
        sample_clients(ids, [1] * 10, 4, round_generator(1, 7), "diversity")


def test_strata_cluster_digits_sites_by_what_they_hold() -> None:
    fed = build_digits_federation(DigitsData(train_sites=60, validation_sites=1, test_sites=1), seed=0)
    problem = problem_for(fed, DigitsData())
    ids = problem.train_site_ids()
    strata = site_strata(problem, ids, clusters=5, seed=0)
    assert sorted(torch.cat(strata).tolist()) == list(range(60)) and len(strata) == 5
    # sites of one stratum share more digit classes than sites of different strata
    classes = [set(fed.sites[i].metadata["classes"]) for i in ids]
    within = [len(classes[a] & classes[b]) for s in strata for a in s.tolist() for b in s.tolist() if a < b]
    across = [len(classes[a] & classes[b]) for i, s in enumerate(strata) for t in strata[i + 1:]
              for a in s.tolist() for b in t.tolist()]
    assert sum(within) / len(within) > sum(across) / len(across) + 0.5
    assert [s.tolist() for s in strata] == [s.tolist() for s in site_strata(problem, ids, clusters=5, seed=0)]


def test_quality_weights_favour_sites_whose_adaptation_helped_within_a_bound() -> None:
    metrics = {"train/support_loss_before": torch.tensor([2.0, 2.0, 2.0, 2.0]),
               "train/query_loss": torch.tensor([0.5, 2.0, 3.0, -5.0])}  # helped, nothing, worse, absurd
    assert adaptation_quality(metrics).tolist() == pytest.approx([0.75, 0.0, 0.0, 1.0])
    w = client_weights([10, 10, 10, 10], "quality", metrics)
    assert w[0] > w[1] == w[2] and w[3] / w[1] == pytest.approx(2.0)  # bounded: at most 2x another of its size
    sized = client_weights([20, 10, 10, 10], "quality", metrics)
    assert sized[0] / sized[1] == pytest.approx(2 * 1.75)
    fedavg_like = {"train/loss_before": torch.tensor([1.0, 1.0]), "train/loss_after": torch.tensor([0.5, 1.0])}
    assert adaptation_quality(fedavg_like).tolist() == pytest.approx([0.5, 0.0])
    with pytest.raises(ValueError, match="needs one of the client metric pairs.*reports \\['train/loss'\\]"):
        client_weights([1, 1], "quality", {"train/loss": torch.ones(2)})


def test_the_learner_trains_with_diversity_and_quality_reproducibly() -> None:
    cfg = DigitsData(train_sites=30, validation_sites=1, test_sites=1)
    fed_cfg = FederatedConfig(rounds=3, clients_per_round=4, sampler="diversity", weighting="quality")
    out = []
    for _ in range(2):
        problem = problem_for(build_digits_federation(cfg, seed=0), cfg)
        learner = MetaLearner(problem, "fomaml", InnerConfig(steps=2, lr=0.1), fed_cfg, ServerConfig("adam", 1e-2), 0)
        opt = learner.configure_optimizers()
        learner.optimizers = lambda *a, _opt=opt, **k: _opt
        start = {k: v.clone() for k, v in learner.meta_params().items()}
        for r in range(3):
            learner.run_round(r)
        out.append(learner.meta_params())
    assert any(not torch.equal(start[k], out[0][k]) for k in start)
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])
    uniform = FederatedConfig(rounds=3, clients_per_round=4)
    learner = MetaLearner(problem_for(build_digits_federation(cfg, seed=0), cfg), "fomaml", InnerConfig(steps=2, lr=0.1),
                          uniform, ServerConfig("adam", 1e-2), 0)
    assert learner._strata is None  # descriptors are computed only for a sampler that needs them


def test_unknown_sampler_and_weighting_are_refused_before_any_data_is_read() -> None:
    cfg = RunConfig(data=DigitsData(), fed=FederatedConfig(sampler="clustered", weighting="loss"))
    with pytest.raises(ValueError, match=r"--fed.sampler clustered \(choose from diversity, size, uniform\).*"
                                         r"--fed.weighting loss \(choose from num_examples, quality, uniform\)"):
        check_run_config(cfg)


def test_flower_runs_refuse_diversity_and_secure_quality_weighting() -> None:
    from pipelines.config import ConfigError
    from pipelines.federate_server import resolve_run

    with pytest.raises(ConfigError, match="fed.sampler=diversity runs in-process only"):
        resolve_run({"vertical": "digits", "fed.sampler": "diversity"})
    with pytest.raises(ConfigError, match="fed.weighting=quality .* without flower.secagg"):
        resolve_run({"vertical": "digits", "fed.weighting": "quality", "flower.secagg": True})
