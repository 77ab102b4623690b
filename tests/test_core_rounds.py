"""Vectorized (one vmap call) and looped rounds give the same numbers (issue 3, test 4)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dataclasses import replace

from core.algorithms import ALGORITHMS, InnerConfig, get_algorithm
from core.context import ContextVector, context_names
from core.problem import supervised_loss
from core.rounds import client_updates
from core.recipes import head_names
from core.tasks import stack_episodes
from core.types import Episode, Params


WAYS = 3


def make_model(context_dim: int = 0) -> nn.Module:
    torch.manual_seed(0)
    context = [ContextVector(context_dim)] if context_dim else []
    return nn.Sequential(*context, nn.Linear(8 + context_dim, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, WAYS))


def model_for(name: str, cfg: InnerConfig) -> tuple[nn.Module, InnerConfig]:
    """The test model and inner config of algorithm ``name``: CAVIA's model reads a context vector, which its
    inner loop adapts; R2-D2's inner loop fits the head; the groups' names for step sizes learned per group
    (the learner resolves these; here they are set by hand)."""
    group = get_algorithm(name).inner_group
    model = make_model(context_dim=2) if group == "context" else make_model()
    names = [n for n, _ in model.named_parameters()]
    head, context = head_names(model), context_names(names)
    cfg = replace(cfg, rate_groups=tuple(g for g in (head, context, tuple(n for n in names if n not in head + context)) if g))
    if group == "head":
        return model, replace(cfg, trainable=head)
    if group == "context":
        return model, replace(cfg, trainable=context)
    return model, cfg


def make_episodes(n: int, shots: int = 2, query: int = 4, seed: int = 0, shots_of: dict[int, int] | None = None) -> list[Episode]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = (shots_of or {}).get(i, shots)
        centers = torch.randn(WAYS, 8, generator=g)
        def draw(m: int):
            y = torch.arange(WAYS).repeat_interleave(m)
            return centers[y] + 0.5 * torch.randn(len(y), 8, generator=g), y
        out.append(Episode(support=draw(k), query=draw(query), site_id=f"site-{i}"))
    return out


def meta_for(name: str, model: nn.Module, cfg: InnerConfig) -> Params:
    base = {k: v.detach() for k, v in model.named_parameters()}
    return {**base, **get_algorithm(name).init_extra(base, cfg)}


def assert_rounds_agree(a, b, atol: float = 1e-5) -> None:
    assert a.directions.keys() == b.directions.keys()
    for k in a.directions:
        torch.testing.assert_close(a.directions[k], b.directions[k], atol=atol, rtol=1e-4, msg=lambda m: f"{k}: {m}")
    for k in a.metrics:
        torch.testing.assert_close(a.metrics[k].float(), b.metrics[k].float(), atol=atol, rtol=1e-4)
    assert torch.equal(a.num_examples, b.num_examples) and a.client_ids == b.client_ids


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_vmap_and_loop_agree_for_every_algorithm(name: str) -> None:
    model, cfg = model_for(name, InnerConfig(steps=3, lr=0.1, weight_decay=1e-3, proximal=0.1))
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    meta = meta_for(name, model, cfg)
    episodes = make_episodes(5)
    alg = get_algorithm(name)
    vec = client_updates(alg, loss_fn, meta, episodes, cfg, vectorize=True)
    loop = client_updates(alg, loss_fn, meta, episodes, cfg, vectorize=False)
    assert vec.vectorized and not loop.vectorized
    assert_rounds_agree(vec, loop)
    # each looped client is exactly the algorithm's own client update
    for i, e in enumerate(episodes):
        d, _ = alg.client_update(loss_fn, meta, e, cfg)
        for k in d:
            torch.testing.assert_close(loop.directions[k][i], d[k].detach(), atol=0, rtol=0)
    assert all(torch.isfinite(v).all() for v in vec.directions.values())


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "fedavg"])
def test_shapes_that_differ_fall_back_to_the_loop(name: str) -> None:
    model = make_model()
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    cfg = InnerConfig(steps=2, lr=0.1)
    meta = meta_for(name, model, cfg)
    episodes = make_episodes(4, shots_of={2: 5})  # client 2 has 5 shots, the others 2
    assert stack_episodes(episodes) is None
    alg = get_algorithm(name)
    fallback = client_updates(alg, loss_fn, meta, episodes, cfg, vectorize=True)
    assert not fallback.vectorized
    assert fallback.num_examples.tolist() == [18, 18, 27, 18]
    loop = client_updates(alg, loss_fn, meta, episodes, cfg, vectorize=False)
    assert_rounds_agree(fallback, loop, atol=0)
    # the same-shaped clients alone, vectorized, agree with their rows of the fallback
    same = [episodes[i] for i in (0, 1, 3)]
    vec = client_updates(alg, loss_fn, meta, same, cfg, vectorize=True)
    assert vec.vectorized
    for k in vec.directions:
        torch.testing.assert_close(vec.directions[k], fallback.directions[k][[0, 1, 3]], atol=1e-5, rtol=1e-4)


def test_stack_episodes_layout() -> None:
    episodes = make_episodes(3)
    stacked = stack_episodes(episodes)
    assert stacked is not None
    assert stacked.support[0].shape == (3, 2 * WAYS, 8) and stacked.query[1].shape == (3, 4 * WAYS)
    torch.testing.assert_close(stacked.support[0][1], episodes[1].support[0])
    # a dtype difference also refuses to stack
    odd = Episode((episodes[0].support[0].double(), episodes[0].support[1]), episodes[0].query)
    assert stack_episodes([episodes[1], odd]) is None
    assert stack_episodes([]) is None


def test_rollout_episodes_use_the_loop_and_see_adapted_weights() -> None:
    """Episodes whose query the client produces from the ADAPTED weights (robotics) run through the
    same first-order algorithms, in the per-client loop."""
    model = make_model()
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    cfg = InnerConfig(steps=2, lr=0.1)
    meta = meta_for("fomaml", model, cfg)
    base = make_episodes(3)
    seen: list[Params] = []

    def query_fn_for(e: Episode):
        def query_fn(adapted: Params):
            seen.append(adapted)
            return e.query
        return query_fn

    rollouts = [Episode(e.support, e.query, e.site_id, query_fn=query_fn_for(e)) for e in base]
    for name in ("fomaml", "perfedavg"):
        seen.clear()
        out = client_updates(get_algorithm(name), loss_fn, meta, rollouts, cfg, vectorize=True)
        ref = client_updates(get_algorithm(name), loss_fn, meta, base, cfg, vectorize=False)
        assert not out.vectorized and len(seen) == 3
        assert all(not v.requires_grad for p in seen for v in p.values())
        assert_rounds_agree(out, ref, atol=0)
    with pytest.raises(ValueError, match="maml"):
        client_updates(get_algorithm("maml"), loss_fn, meta, rollouts, cfg)


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "metasgd", "metasgd-layer", "fomaml-group",
                                  "perfedavg", "perfedavg-hf"])
def test_an_inner_loop_on_the_head_alone_agrees_vmap_and_loop_and_leaves_the_body_to_the_meta_step(name: str) -> None:
    """ANIL: the inner loop adapts only the head group; vmap = loop still holds, and for Reptile (whose
    direction is init - adapted) the body's direction is exactly zero. Every algorithm whose inner loop adapts
    the support honours the group (Meta-SGD and Per-FedAvg once ignored it, then were evaluated with the
    group's recipe); a learned step size of the body is then never used, so its direction is zero."""
    model = make_model()
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    cfg = InnerConfig(steps=3, lr=0.1, group="head", trainable=("4.weight", "4.bias"),
                      rate_groups=(("4.weight", "4.bias"), ("0.weight", "0.bias", "2.weight", "2.bias")))
    meta = meta_for(name, model, cfg)
    episodes = make_episodes(4)
    alg = get_algorithm(name)
    vec = client_updates(alg, loss_fn, meta, episodes, cfg, vectorize=True)
    loop = client_updates(alg, loss_fn, meta, episodes, cfg, vectorize=False)
    assert_rounds_agree(vec, loop)
    full = client_updates(alg, loss_fn, meta, episodes, replace(cfg, group="all", trainable=()), vectorize=False)
    assert not torch.allclose(full.directions["4.weight"], loop.directions["4.weight"])
    if name == "reptile":
        assert torch.count_nonzero(loop.directions["0.weight"]) == 0
        assert torch.count_nonzero(loop.directions["4.weight"]) > 0
    if "inner_lr/0.weight" in meta:
        assert torch.count_nonzero(loop.directions["inner_lr/0.weight"]) == 0
        assert torch.count_nonzero(loop.directions["inner_lr/4.weight"]) > 0


def test_per_fedavg_hf_on_the_head_is_one_step_maml_on_the_head() -> None:
    """Per-FedAvg HF's Hessian-vector correction of a step restricted to a group is the exact second-order
    meta-gradient of that step (one-step MAML on the same group, the Hessian batch being the support)."""
    model = make_model()
    loss_fn = supervised_loss(model, nn.functional.cross_entropy)
    cfg = InnerConfig(steps=1, lr=0.3, group="head", trainable=("4.weight", "4.bias"))
    meta = meta_for("maml", model, cfg)
    episodes = make_episodes(3)
    hf = client_updates(get_algorithm("perfedavg-hf"), loss_fn, meta, episodes, cfg, vectorize=False)
    maml = client_updates(get_algorithm("maml"), loss_fn, meta, episodes, cfg, vectorize=False)
    for k in meta:
        torch.testing.assert_close(hf.directions[k], maml.directions[k], rtol=1e-5, atol=1e-6)


def test_the_learner_resolves_the_inner_group_on_its_model() -> None:
    from core.learner import with_group

    class Groups:
        def param_groups(self, model):
            return {"head": ("4.weight", "4.bias"), "body": ("0.weight",)}

    model = make_model()
    assert with_group(InnerConfig(group="head"), Groups(), model).trainable == ("4.weight", "4.bias")
    assert with_group(InnerConfig(), Groups(), model).trainable == ()
    with pytest.raises(ValueError, match="inner.group 'neck'"):
        with_group(InnerConfig(group="neck"), Groups(), model)


def test_reptile_on_one_group_of_a_random_model_is_refused_before_any_training(fml_home, capsys) -> None:
    """Reptile's direction is zero outside its inner-loop group: from a random initialization the rest would
    never train (fraud: 0.10 PR-AUC below fedavg+ft). Refused unless the run warm-starts from FedAvg."""
    from pipelines.cli import main

    assert main(["run", "sine", "--preset", "quick", "--algorithms", "reptile", "--inner.group", "head"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reptile with inner.group 'head'" in err[0] and "--warm-start" in err[0], err
    assert not (fml_home / "mlflow.db").exists()  # refused before the tracking store exists
    assert get_algorithm("fomaml").trains_outside_group and not get_algorithm("reptile").trains_outside_group
