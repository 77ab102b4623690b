"""Bad input stops with a message that names the site / name and the choices (issue 3, test 6), plus
sites, federations and the episode sampler."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from core.aggregation import aggregate, client_weights, stack_updates
from core.algorithms import InnerConfig, get_algorithm
from core.registry import Registry, UnknownNameError
from core.rounds import client_updates
from core.sampling import sample_clients
from core.server import make_server_optimizer, set_direction_as_grad
from core.tasks import EpisodeSpec, Federation, Site, SiteDataError, sample_episode, split_indices
from core.types import ClientUpdate, Episode


def class_site(site_id: str = "clinic-7", per_class: tuple[int, ...] = (6, 6, 3)) -> Site:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    return Site(site_id, torch.randn(len(y), 4), y)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- too many shots names the site
def test_too_many_shots_names_the_site_and_class() -> None:
    with pytest.raises(SiteDataError, match=r"site 'clinic-7' has 3 samples of class 2.*5 shots"):
        split_indices(class_site(), EpisodeSpec(shots=5, by="class"), gen())
    with pytest.raises(SiteDataError, match=r"clinic-7.*4 shots \+ 2 query"):
        split_indices(class_site(), EpisodeSpec(shots=4, query=2, by="class", num_classes=3), gen())
    # exactly enough rows with an explicit query size is fine; the default query needs one row left to score
    split_indices(class_site(), EpisodeSpec(shots=1, query=2, by="class"), gen())
    with pytest.raises(SiteDataError, match="clinic-7"):
        split_indices(class_site(), EpisodeSpec(shots=3, by="class"), gen())


def test_row_and_group_episodes_name_the_site() -> None:
    site = Site("plant-3", torch.randn(5, 2), torch.randn(5), groups=torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(SiteDataError, match=r"plant-3.*5 rows.*needs 6"):
        split_indices(site, EpisodeSpec(shots=5, by="row"), gen())
    with pytest.raises(SiteDataError, match=r"plant-3.*3 groups"):
        split_indices(site, EpisodeSpec(shots=3, by="group"), gen())
    no_groups = Site("plant-4", torch.randn(5, 2), torch.randn(5))
    with pytest.raises(SiteDataError, match=r"plant-4.*no groups"):
        split_indices(no_groups, EpisodeSpec(shots=1, by="group"), gen())
    with pytest.raises(ValueError, match="class, row or group"):
        split_indices(site, EpisodeSpec(shots=1, by="window"), gen())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shots must be >= 0"):
        split_indices(site, EpisodeSpec(shots=-1, by="row"), gen())


def test_site_shape_mismatch_names_the_site() -> None:
    with pytest.raises(SiteDataError, match=r"bank-2.*10 inputs but 9 targets"):
        Site("bank-2", torch.randn(10, 3), torch.randn(9))
    with pytest.raises(SiteDataError, match=r"bank-2.*groups has 4 rows"):
        Site("bank-2", torch.randn(10, 3), torch.randn(10), groups=torch.zeros(4))


# ---------------------------------------------------------------- federation roles
def test_site_in_two_roles_is_an_error() -> None:
    sites = {s: class_site(s) for s in ("a", "b", "c")}
    with pytest.raises(SiteDataError, match=r"site 'b' is in both 'train' and 'test'"):
        Federation(sites, {"train": ["a", "b"], "test": ["b"]})
    with pytest.raises(SiteDataError, match=r"unknown site 'z'.*known sites"):
        Federation(sites, {"train": ["a", "z"]})
    with pytest.raises(ValueError, match="unknown role 'holdout'"):
        Federation(sites, {"holdout": ["a"]})


def test_split_is_by_site_seeded_and_validated() -> None:
    sites = [class_site(f"s{i:02d}") for i in range(20)]
    a = Federation.split(sites, validation=3, test=4, seed=1, test_ids=["s05"])
    b = Federation.split(sites, validation=3, test=4, seed=1, test_ids=["s05"])
    c = Federation.split(sites, validation=3, test=4, seed=2, test_ids=["s05"])
    assert a.roles == b.roles and a.roles != c.roles
    assert "s05" in a.roles["test"] and len(a.roles["test"]) == 4 and len(a.roles["validation"]) == 3
    all_ids = [sid for ids in a.roles.values() for sid in ids]
    assert sorted(all_ids) == sorted(s.site_id for s in sites)  # every site exactly once
    assert a.role_of("s05") == "test"
    with pytest.raises(SiteDataError, match="unknown site id 'nope'"):
        Federation.split(sites, validation=1, test=1, seed=0, test_ids=["nope"])
    with pytest.raises(SiteDataError, match="still leave training sites"):
        Federation.split(sites, validation=10, test=10, seed=0)
    with pytest.raises(SiteDataError, match=r"site id\(s\) \['s00'\] appear more than once"):
        Federation.split(sites + [class_site("s00")], validation=1, test=1, seed=0)
    with pytest.raises(SiteDataError, match="unknown site 'ghost'"):
        a.role_of("ghost")


def test_episodes_are_seeded_and_disjoint() -> None:
    site = class_site(per_class=(10, 10, 10))
    spec = EpisodeSpec(shots=2, query=5, by="class", num_classes=3)
    e1, e2 = sample_episode(site, spec, gen(4)), sample_episode(site, spec, gen(4))
    assert torch.equal(e1.support[0], e2.support[0]) and torch.equal(e1.query[1], e2.query[1])
    assert e1.support[1].tolist() == [0, 0, 1, 1, 2, 2] and e1.query[0].shape == (15, 4)
    sup, qry = split_indices(site, spec, gen(4))
    assert not set(sup.tolist()) & set(qry.tolist())
    group_site = Site("g", torch.randn(12, 2), torch.randn(12), groups=torch.arange(12) // 3)
    sup, qry = split_indices(group_site, EpisodeSpec(shots=2, by="group"), gen(1))
    assert not set(group_site.groups[sup].tolist()) & set(group_site.groups[qry].tolist())
    assert len(sup) == 6 and len(qry) == 6  # whole units only


# ---------------------------------------------------------------- unknown names list the choices
def test_unknown_algorithm_lists_choices() -> None:
    with pytest.raises(UnknownNameError) as err:
        get_algorithm("mamll")
    msg = str(err.value)
    assert "unknown algorithm 'mamll'" in msg
    for name in ("fedavg", "maml", "fomaml", "reptile", "perfedavg", "perfedavg-hf", "metasgd"):
        assert name in msg
    assert isinstance(err.value, KeyError)  # still catchable as a KeyError


def test_unknown_server_optimizer_lists_choices() -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(UnknownNameError, match=r"unknown server optimizer 'rmsprop'.*adagrad, adam, sgd, yogi"):
        make_server_optimizer("rmsprop", [p], 0.1)


def test_unknown_aggregation_weighting_and_sampler() -> None:
    stacked = {"a": torch.ones(2, 3)}
    with pytest.raises(UnknownNameError, match=r"unknown aggregation rule 'krum'.*mean, median, trimmed_mean"):
        aggregate(stacked, torch.tensor([0.5, 0.5]), "krum")
    with pytest.raises(UnknownNameError, match=r"unknown client weighting 'by_loss'.*num_examples, quality, uniform"):
        client_weights([1, 2], "by_loss")
    with pytest.raises(ValueError, match="sum to zero"):
        client_weights([0, 0], "num_examples")
    with pytest.raises(UnknownNameError, match=r"unknown client sampler 'stratified'.*size, uniform"):
        sample_clients(["a", "b"], [1, 1], 1, gen(), "stratified")
    with pytest.raises(ValueError, match="no training sites"):
        sample_clients([], [], 1, gen())


def test_registry_refuses_duplicates() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("one", 1)
    with pytest.raises(ValueError, match="thing 'one' is already registered"):
        reg.register("one", 2)
    assert "one" in reg and reg.names() == ["one"]


# ---------------------------------------------------------------- server / aggregation inputs
def test_direction_missing_a_parameter_is_named() -> None:
    named = {"w": nn.Parameter(torch.zeros(2)), "b": nn.Parameter(torch.zeros(()))}
    with pytest.raises(ValueError, match=r"lacks parameters \['b'\]"):
        set_direction_as_grad(named, {"w": torch.ones(2)})


def test_client_with_other_parameters_is_named() -> None:
    good = ClientUpdate({"w": torch.zeros(2)}, 1, client_id="site-a")
    bad = ClientUpdate({"w": torch.zeros(2), "extra": torch.zeros(1)}, 1, client_id="site-b")
    with pytest.raises(ValueError, match=r"client 'site-b' sent parameters \['extra', 'w'\]"):
        stack_updates([good, bad])
    with pytest.raises(ValueError, match="no client updates"):
        stack_updates([])


def test_rollout_tasks_refused_by_second_order_algorithms() -> None:
    loss_fn = lambda p, b: ((b[0] @ p["w"] - b[1]) ** 2).mean()  # noqa: E731
    batch = (torch.randn(4, 2), torch.randn(4))
    ep = Episode(batch, batch, "robot-1", query_fn=lambda adapted: batch)
    for name in ("maml", "metasgd", "perfedavg-hf"):
        with pytest.raises(ValueError, match=rf"algorithm '{name}' needs a fixed query set"):
            client_updates(get_algorithm(name), loss_fn, {"w": torch.zeros(2)}, [ep], InnerConfig(steps=1))
