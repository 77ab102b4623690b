"""``core.autodiff``: the eager fast path gives what ``torch.func`` gives, alone, nested and under vmap."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

from core.autodiff import grad, grad_and_value, transform_active
from core.losses import cross_entropy
from core.types import Params


def loss(params: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return ((torch.tanh(x @ params["w"]) @ params["v"] - y) ** 2).mean()


@pytest.fixture
def setup() -> tuple[Params, tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, 4, generator=g), "v": torch.randn(4, generator=g)}
    return params, (torch.randn(6, 3, generator=g), torch.randn(6, generator=g))


def assert_same(a: Params, b: Params) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_eager_grad_and_value_equals_torch_func(setup) -> None:
    params, batch = setup
    assert not transform_active()
    grads, value = grad_and_value(loss)(params, batch)
    ref_grads, ref_value = torch.func.grad_and_value(loss)(params, batch)
    assert_same(grads, ref_grads)
    torch.testing.assert_close(value, ref_value)
    assert not value.requires_grad and not any(g.requires_grad for g in grads.values())
    assert all(not p.requires_grad for p in params.values())  # inputs untouched


def test_has_aux_and_unused_parameters(setup) -> None:
    params, batch = setup
    params = {**params, "unused": torch.ones(2)}
    grads, aux = grad(lambda p, b: (loss(p, b), "aux"), has_aux=True)(params, batch)
    assert aux == "aux"
    assert torch.equal(grads["unused"], torch.zeros(2))  # torch.func gives zeros, not None


def test_eager_second_order_equals_nested_torch_func(setup) -> None:
    params, batch = setup

    def after_one_step(p: Params, b) -> Tensor:
        g = grad(loss)(p, b)
        return loss({k: p[k] - 0.1 * g[k] for k in p}, b)

    def after_one_step_func(p: Params, b) -> Tensor:
        g = torch.func.grad(loss)(p, b)
        return loss({k: p[k] - 0.1 * g[k] for k in p}, b)

    # the outer eager gradient differentiates THROUGH the inner one (it is not first order)
    first_order = grad(lambda p, b: loss({k: p[k] - 0.1 * grad(loss)(p, b)[k].detach() for k in p}, b))(params, batch)
    second_order = grad(after_one_step)(params, batch)
    assert_same(second_order, torch.func.grad(after_one_step_func)(params, batch))
    assert any(not torch.allclose(second_order[k], first_order[k]) for k in params)


def test_under_vmap_it_uses_torch_func(setup) -> None:
    params, _ = setup
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(4, 6, 3, generator=g), torch.randn(4, 6, generator=g)
    batched = vmap(lambda x, y: grad(loss)(params, (x, y)))(xs, ys)
    for i in range(4):
        assert_same({k: v[i] for k, v in batched.items()}, grad(loss)(params, (xs[i], ys[i])))


def test_cross_entropy_equals_torch_eagerly_and_under_vmap() -> None:
    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(3, 7, 5, generator=g), torch.randint(0, 5, (3, 7), generator=g)
    torch.testing.assert_close(cross_entropy(logits[0], targets[0]), F.cross_entropy(logits[0], targets[0]))
    torch.testing.assert_close(vmap(cross_entropy)(logits, targets),
                               torch.stack([F.cross_entropy(a, b) for a, b in zip(logits, targets)]))
