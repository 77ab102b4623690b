"""Lazy sites (issue 16, item 1): a site is a cheap handle whose rows are built on demand and cached for a
round's sites only; the digits federation is built from them and gives exactly the rows of eager sites."""
from __future__ import annotations

import pytest
import torch

from core.algorithms import InnerConfig
from core.config import FederatedConfig, ServerConfig
from core.learner import MetaLearner
from core.tasks import EpisodeSpec, Federation, LazySite, RowCache, Site, SiteDataError, sample_episode
from data_adapters.digits import DigitsData, build_digits_federation, load_digit_arrays, make_task_site
from pipelines.run import dataset_fingerprint
from verticals.digits import problem_for


def counting_site(site_id: str, cache: RowCache, calls: list[str], rows: int = 8) -> LazySite:
    def load():
        calls.append(site_id)
        g = torch.Generator().manual_seed(len(site_id) + rows)
        return Site(site_id, torch.randn(rows, 3, generator=g), torch.arange(rows) % 2, metadata={"built": True})

    return LazySite(site_id, load, cache, size=rows, identity=site_id.encode(), metadata={"static": 1})


def test_a_handle_builds_its_rows_on_first_use_and_the_cache_keeps_only_the_most_recent_sites() -> None:
    cache, calls = RowCache(capacity=2), []
    sites = [counting_site(f"s{i}", cache, calls) for i in range(5)]
    assert [len(s) for s in sites] == [8] * 5 and calls == []  # sizes never build rows
    for s in sites:
        episode = sample_episode(s, EpisodeSpec(shots=2, query=2, by="class", num_classes=2), torch.Generator())
        assert episode.support[0].shape == (4, 3)
    assert calls == [f"s{i}" for i in range(5)]  # one build per site, though x, y and classes were all read
    assert len(cache._rows) == 2
    sites[4].x  # still cached
    sites[0].x  # evicted: built again
    assert calls[-1] == "s0" and calls.count("s4") == 1
    assert sites[0].metadata == {"static": 1, "built": True}


def test_a_handle_without_a_size_learns_it_from_its_first_build() -> None:
    calls: list[str] = []
    site = counting_site("u", RowCache(), calls)
    site.size = None
    assert len(site) == 8 and calls == ["u"] and site.size == 8


def test_a_handle_whose_rows_disagree_with_its_size_is_refused() -> None:
    site = LazySite("bad", lambda: Site("bad", torch.zeros(4, 2), torch.zeros(4)), RowCache(), size=5, identity=b"bad")
    with pytest.raises(SiteDataError, match="'bad': its handle says 5 rows, its data has 4"):
        site.x


def test_row_cache_capacity_is_checked() -> None:
    with pytest.raises(ValueError, match="capacity >= 1"):
        RowCache(0)


def test_lazy_digits_sites_hold_exactly_the_rows_of_eager_sites() -> None:
    cfg = DigitsData(train_sites=6, validation_sites=2, test_sites=3)
    fed = build_digits_federation(cfg, seed=3)
    assert all(isinstance(s, LazySite) for s in fed.sites.values())
    x, y = load_digit_arrays()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    n_held = int(len(y) * cfg.heldout_fraction)
    pools = {"train": perm[n_held:], "validation": perm[:n_held], "test": perm[:n_held]}
    for r_i, role in enumerate(("train", "validation", "test")):
        for i, sid in enumerate(fed.roles[role]):
            eager = make_task_site(sid, x[pools[role]], y[pools[role]], cfg.ways, 3 * 100_003 + r_i * 10_007 + i)
            lazy = fed.sites[sid]
            assert torch.equal(lazy.x, eager.x) and torch.equal(lazy.y, eager.y)
            assert len(lazy) == len(eager) and lazy.metadata == eager.metadata


def test_preparing_many_sites_builds_none_of_them_and_the_fingerprint_reads_none() -> None:
    fed = build_digits_federation(DigitsData(train_sites=20_000, validation_sites=2, test_sites=2), seed=0)
    cache = next(iter(fed.sites.values())).cache
    assert len(fed.sites) == 20_004 and len(cache._rows) == 0
    problem = problem_for(fed, DigitsData())
    first = dataset_fingerprint(problem)
    assert len(cache._rows) == 0 and first["sites"] == 20_004
    assert first == dataset_fingerprint(problem_for(build_digits_federation(
        DigitsData(train_sites=20_000, validation_sites=2, test_sites=2), seed=0), DigitsData()))
    other = dataset_fingerprint(problem_for(build_digits_federation(
        DigitsData(train_sites=20_000, validation_sites=2, test_sites=2), seed=1), DigitsData()))
    assert other["sha256"] != first["sha256"]


def _eager_copy(fed: Federation) -> Federation:
    from core.tasks import Site

    sites = {sid: Site(sid, s.x.clone(), s.y.clone(), metadata=dict(s.metadata)) for sid, s in fed.sites.items()}
    return Federation(sites, {k: list(v) for k, v in fed.roles.items()})


def test_meta_training_on_lazy_sites_equals_meta_training_on_eager_copies() -> None:
    cfg = DigitsData(train_sites=40, validation_sites=2, test_sites=2, cached_sites=3)  # evicts every round
    lazy = build_digits_federation(cfg, seed=0)
    results = []
    for fed in (lazy, _eager_copy(lazy)):
        learner = MetaLearner(problem_for(fed, cfg), "fomaml", InnerConfig(steps=2, lr=0.1),
                              FederatedConfig(rounds=4, clients_per_round=5), ServerConfig("adam", 1e-2), seed=0)
        opt = learner.configure_optimizers()
        learner.optimizers = lambda *a, _opt=opt, **k: _opt
        for r in range(4):
            learner.run_round(r)
        results.append(learner.meta_params())
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k
