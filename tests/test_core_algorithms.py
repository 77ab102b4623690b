"""Client updates of every algorithm against hand-derived autograd and closed forms (issue 3, tests 1 and 3)."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from core.adapt import adapt
from core.algorithms import InnerConfig, get_algorithm
from core.algorithms.base import LR_PREFIX
from core.types import Episode, Params

torch.set_default_dtype(torch.float32)
ATOL = 1e-5


# ---------------------------------------------------------------- tiny models and data
def mlp_loss(params: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
    """A 3-4-1 tanh network with MSE: smooth, so second-order terms are non-trivial."""
    x, y = batch
    h = torch.tanh(x @ params["w1"].T + params["b1"])
    return ((h @ params["w2"].T + params["b2"] - y) ** 2).mean()


def mlp_params(seed: int = 0) -> Params:
    g = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(4, 3, generator=g),
        "b1": torch.randn(4, generator=g) * 0.1,
        "w2": torch.randn(1, 4, generator=g),
        "b2": torch.zeros(1),
    }


def regression_episode(seed: int = 1, n_s: int = 6, n_q: int = 8, d: int = 3) -> Episode:
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(n_s, d, generator=g), torch.randn(n_q, d, generator=g)
    ys, yq = torch.randn(n_s, 1, generator=g), torch.randn(n_q, 1, generator=g)
    return Episode(support=(xs, ys), query=(xq, yq), site_id=f"site-{seed}")


def lsq_loss(params: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Least squares ``1/(2n) ||X w - y||^2``: a quadratic with Hessian ``X^T X / n``."""
    x, y = batch
    return 0.5 * ((x @ params["w"] - y) ** 2).mean()


def lsq_grad(w: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return x.T @ (x @ w - y) / x.shape[0]


def lsq_hessian(batch: tuple[Tensor, Tensor]) -> Tensor:
    x = batch[0]
    return x.T @ x / x.shape[0]


def lsq_episode(seed: int = 3, d: int = 4) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(
        support=(torch.randn(7, d, generator=g), torch.randn(7, generator=g)),
        query=(torch.randn(9, d, generator=g), torch.randn(9, generator=g)),
    )


def assert_params_close(a: Params, b: Params, atol: float = ATOL) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=lambda m: f"{k}: {m}")


# ---------------------------------------------------------------- 1. MAML
def hand_maml_gradient(params: Params, episode: Episode, steps: int, lr: float) -> Params:
    """Second-order MAML with plain ``torch.autograd.grad(create_graph=True)``."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    current = dict(leaves)
    for _ in range(steps):
        loss = mlp_loss(current, episode.support)
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=True)
        current = {k: v - lr * g for (k, v), g in zip(current.items(), grads)}
    query_loss = mlp_loss(current, episode.query)
    outer = torch.autograd.grad(query_loss, list(leaves.values()))
    return dict(zip(leaves, outer))


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_equals_hand_derived_second_order(steps: int) -> None:
    params, episode = mlp_params(), regression_episode()
    cfg = InnerConfig(steps=steps, lr=0.1)
    direction, metrics = get_algorithm("maml").client_update(mlp_loss, params, episode, cfg)
    expected = hand_maml_gradient(params, episode, steps, 0.1)
    assert_params_close(direction, expected)
    # the second-order term matters here: FO-MAML gives a measurably different direction
    fo, _ = get_algorithm("fomaml").client_update(mlp_loss, params, episode, cfg)
    assert max((fo[k] - expected[k]).abs().max() for k in fo) > 1e-3
    adapted = adapt(mlp_loss, params, episode.support, steps, 0.1)
    torch.testing.assert_close(metrics["train/query_loss"], mlp_loss(adapted, episode.query))


def test_maml_closed_form_on_least_squares() -> None:
    """One step on a quadratic: grad = (I - a H_s) grad L_q(w - a grad L_s(w))."""
    episode, a = lsq_episode(), 0.2
    w = torch.randn(4, generator=torch.Generator().manual_seed(9))
    direction, _ = get_algorithm("maml").client_update(lsq_loss, {"w": w}, episode, InnerConfig(steps=1, lr=a))
    w1 = w - a * lsq_grad(w, episode.support)
    expected = (torch.eye(4) - a * lsq_hessian(episode.support)) @ lsq_grad(w1, episode.query)
    torch.testing.assert_close(direction["w"], expected, atol=ATOL, rtol=1e-4)


def test_fomaml_zero_steps_is_plain_gradient() -> None:
    params, episode = mlp_params(), regression_episode()
    direction, _ = get_algorithm("fomaml").client_update(mlp_loss, params, episode, InnerConfig(steps=0, lr=0.1))
    plain = torch.func.grad(mlp_loss)(params, episode.query)
    assert_params_close(direction, plain, atol=1e-7)
    # and MAML with zero steps agrees (no inner loop to differentiate through)
    maml, _ = get_algorithm("maml").client_update(mlp_loss, params, episode, InnerConfig(steps=0, lr=0.1))
    assert_params_close(maml, plain, atol=1e-7)


def test_fomaml_is_query_gradient_at_adapted_weights() -> None:
    params, episode = mlp_params(), regression_episode()
    cfg = InnerConfig(steps=2, lr=0.05)
    direction, _ = get_algorithm("fomaml").client_update(mlp_loss, params, episode, cfg)
    adapted = adapt(mlp_loss, params, episode.support, 2, 0.05)
    assert_params_close(direction, torch.func.grad(mlp_loss)(adapted, episode.query))


# ---------------------------------------------------------------- 3. Reptile, Per-FedAvg, Meta-SGD
def test_reptile_direction_is_init_minus_adapted() -> None:
    params, episode = mlp_params(), regression_episode()
    cfg = InnerConfig(steps=4, lr=0.05)
    direction, _ = get_algorithm("reptile").client_update(mlp_loss, params, episode, cfg)
    both = tuple(torch.cat([s, q]) for s, q in zip(episode.support, episode.query))
    # an independent plain-autograd SGD loop on support + query
    current = {k: v.clone() for k, v in params.items()}
    for _ in range(4):
        leaves = {k: v.requires_grad_(True) for k, v in current.items()}
        grads = torch.autograd.grad(mlp_loss(leaves, both), list(leaves.values()))
        current = {k: (v - 0.05 * g).detach() for (k, v), g in zip(leaves.items(), grads)}
    assert_params_close(direction, {k: params[k] - current[k] for k in params})


def test_reptile_one_client_one_step_is_sgd() -> None:
    params, episode = mlp_params(), regression_episode()
    direction, _ = get_algorithm("reptile").client_update(mlp_loss, params, episode, InnerConfig(steps=1, lr=0.05))
    both = tuple(torch.cat([s, q]) for s, q in zip(episode.support, episode.query))
    g = torch.func.grad(mlp_loss)(params, both)
    assert_params_close(direction, {k: 0.05 * g[k] for k in g})


def test_perfedavg_hf_matches_formula_on_quadratic() -> None:
    """Fallah et al. 2020: (I - a H(w; D_s)) grad L(w - a grad L(w; D_s); D_q), exact on a quadratic."""
    episode, a = lsq_episode(), 0.3
    w = torch.randn(4, generator=torch.Generator().manual_seed(5))
    # steps in the config are ignored: Per-FedAvg takes exactly one inner step
    direction, _ = get_algorithm("perfedavg-hf").client_update(lsq_loss, {"w": w}, episode, InnerConfig(steps=5, lr=a))
    g_q = lsq_grad(w - a * lsq_grad(w, episode.support), episode.query)
    expected = g_q - a * lsq_hessian(episode.support) @ g_q
    torch.testing.assert_close(direction["w"], expected, atol=ATOL, rtol=1e-4)
    fo, _ = get_algorithm("perfedavg").client_update(lsq_loss, {"w": w}, episode, InnerConfig(steps=5, lr=a))
    torch.testing.assert_close(fo["w"], g_q, atol=ATOL, rtol=1e-4)


def test_metasgd_gradient_wrt_step_sizes() -> None:
    """One step with per-coordinate rates ``alpha``: w' = w - alpha * g_s, so
    dL_q/dalpha = -grad L_q(w') * g_s and dL_q/dw = (I - diag(alpha) H_s)^T grad L_q(w')."""
    episode = lsq_episode()
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(4, generator=gen)
    alpha = 0.05 + 0.3 * torch.rand(4, generator=gen)
    meta = {"w": w, LR_PREFIX + "w": alpha}
    direction, _ = get_algorithm("metasgd").client_update(lsq_loss, meta, episode, InnerConfig(steps=1, lr=0.123))
    g_s = lsq_grad(w, episode.support)
    g_q = lsq_grad(w - alpha * g_s, episode.query)
    torch.testing.assert_close(direction[LR_PREFIX + "w"], -g_q * g_s, atol=ATOL, rtol=1e-4)
    expected_w = (torch.eye(4) - torch.diag(alpha) @ lsq_hessian(episode.support)).T @ g_q
    torch.testing.assert_close(direction["w"], expected_w, atol=ATOL, rtol=1e-4)


def test_metasgd_init_extra_is_inner_lr() -> None:
    alg = get_algorithm("metasgd")
    extra = alg.init_extra(mlp_params(), InnerConfig(lr=0.07))
    assert set(extra) == {LR_PREFIX + k for k in mlp_params()}
    assert all(torch.all(v == 0.07) for v in extra.values())


def test_metasgd_layer_learns_one_step_size_per_tensor() -> None:
    """One scalar rate per tensor: dL_q/dalpha = -<grad L_q(w'), g_s>, the per-entry gradients summed."""
    alg = get_algorithm("metasgd-layer")
    extra = alg.init_extra(mlp_params(), InnerConfig(lr=0.07))
    assert set(extra) == {LR_PREFIX + k for k in mlp_params()}
    assert all(v.shape == () and float(v) == pytest.approx(0.07) for v in extra.values())
    episode = lsq_episode()
    w = torch.randn(4, generator=torch.Generator().manual_seed(11))
    alpha = torch.tensor(0.2)
    direction, _ = alg.client_update(lsq_loss, {"w": w, LR_PREFIX + "w": alpha}, episode, InnerConfig(steps=1, lr=0.123))
    g_s = lsq_grad(w, episode.support)
    g_q = lsq_grad(w - alpha * g_s, episode.query)
    assert direction[LR_PREFIX + "w"].shape == ()
    torch.testing.assert_close(direction[LR_PREFIX + "w"], -(g_q * g_s).sum(), atol=ATOL, rtol=1e-4)


def test_r2d2_meta_gradient_flows_through_the_closed_form_ridge_head() -> None:
    """R2-D2 on the tanh network with MSE: one Newton step IS ridge toward the meta head,
    w* = (2/n F^T F + lam I)^-1 (2/n F^T y + lam w0) on features F = [tanh(x W1^T + b1), 1]; the direction
    is the gradient of the query loss at w* with respect to the body AND the meta head w0."""
    params, episode, lam = mlp_params(), regression_episode(), 0.5
    cfg = InnerConfig(steps=1, lr=lam, trainable=("w2", "b2"))
    direction, _ = get_algorithm("r2d2").client_update(mlp_loss, params, episode, cfg)

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    xs, ys = episode.support
    feats = torch.cat([torch.tanh(xs @ leaves["w1"].T + leaves["b1"]), torch.ones(len(xs), 1)], dim=1)
    w0 = torch.cat([leaves["w2"].reshape(-1), leaves["b2"]])
    n = len(xs)
    w = torch.linalg.solve(2 / n * feats.T @ feats + lam * torch.eye(5), 2 / n * feats.T @ ys.reshape(-1) + lam * w0)
    fitted = {"w1": leaves["w1"], "b1": leaves["b1"], "w2": w[:4].reshape(1, 4), "b2": w[4:]}
    expected = dict(zip(leaves, torch.autograd.grad(mlp_loss(fitted, episode.query), list(leaves.values()))))
    assert_params_close(direction, expected)
    with pytest.raises(ValueError, match="head"):
        get_algorithm("r2d2").client_update(mlp_loss, params, episode, InnerConfig(steps=1, lr=lam))


def test_fedavg_direction_is_init_minus_local_weights_on_all_data() -> None:
    params, episode = mlp_params(), regression_episode()
    direction, _ = get_algorithm("fedavg").client_update(mlp_loss, params, episode, InnerConfig(steps=3, lr=0.05))
    both = tuple(torch.cat([s, q]) for s, q in zip(episode.support, episode.query))
    local = adapt(mlp_loss, params, both, 3, 0.05)
    assert_params_close(direction, {k: params[k] - local[k] for k in params})


# ---------------------------------------------------------------- the inner loop itself
def test_adapt_is_pure_and_zero_steps_is_identity() -> None:
    params, episode = mlp_params(), regression_episode()
    before = {k: v.clone() for k, v in params.items()}
    out = adapt(mlp_loss, params, episode.support, 0, 0.1)
    assert all(out[k] is params[k] for k in params)
    adapt(mlp_loss, params, episode.support, 3, 0.1, weight_decay=0.1, proximal=0.5)
    assert_params_close(params, before, atol=0)


def test_adapt_regularizers_follow_their_gradients() -> None:
    """weight decay adds ``wd * w`` to the gradient; the proximal term adds ``mu (w - anchor)``."""
    episode = lsq_episode()
    w = torch.randn(4, generator=torch.Generator().manual_seed(2))
    anchor = torch.randn(4, generator=torch.Generator().manual_seed(3))
    out = adapt(lsq_loss, {"w": w}, episode.support, 1, 0.1, weight_decay=0.2, proximal=0.5, anchor={"w": anchor})
    expected = w - 0.1 * (lsq_grad(w, episode.support) + 0.2 * w + 0.5 * (w - anchor))
    torch.testing.assert_close(out["w"], expected, atol=ATOL, rtol=1e-4)
    # proximal toward the initialization by default: no pull at the first step
    out = adapt(lsq_loss, {"w": w}, episode.support, 1, 0.1, proximal=10.0)
    torch.testing.assert_close(out["w"], w - 0.1 * lsq_grad(w, episode.support), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("weight_decay,proximal", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.5), (0.1, 0.5)])
def test_perfedavg_hf_equals_one_step_maml(weight_decay: float, proximal: float) -> None:
    """With its Hessian batch = the support batch, Per-FedAvg HF IS the exact one-step MAML meta-gradient,
    regularizers of the inner step included."""
    params, episode = mlp_params(), regression_episode()
    cfg = InnerConfig(steps=1, lr=0.1, weight_decay=weight_decay, proximal=proximal)
    hf, _ = get_algorithm("perfedavg-hf").client_update(mlp_loss, params, episode, cfg)
    maml, _ = get_algorithm("maml").client_update(mlp_loss, params, episode, cfg)
    assert_params_close(hf, maml)


def test_adapt_step_size_forms_agree() -> None:
    """A float lr, a tensor lr and per-parameter rates all equal to it take the same step."""
    params, episode = mlp_params(), regression_episode()
    a = adapt(mlp_loss, params, episode.support, 2, 0.1)
    b = adapt(mlp_loss, params, episode.support, 2, torch.tensor(0.1))
    c = adapt(mlp_loss, params, episode.support, 2, 0.5, lrs={k: torch.full_like(v, 0.1) for k, v in params.items()})
    assert_params_close(a, b, atol=1e-6)
    assert_params_close(a, c, atol=1e-6)


# ---------------------------------------------------------------- step sizes learned per parameter group
GROUPS = (("w1", "b1"), ("w2", "b2"))


def layer_rates(value: float) -> Params:
    return {LR_PREFIX + k: torch.tensor(value) for k in mlp_params()}


def test_metasgd_group_ties_each_groups_rate_to_the_sum_of_its_tensors() -> None:
    """Second order: the initialization's direction is Meta-SGD's, and every tensor of a group gets the gradient
    with respect to the ONE rate they share: the sum of their per-tensor (metasgd-layer) rate gradients."""
    params, episode = mlp_params(), regression_episode()
    meta = {**params, **layer_rates(0.15)}
    cfg = InnerConfig(steps=2, lr=0.123, rate_groups=GROUPS)
    grouped, _ = get_algorithm("metasgd-group").client_update(mlp_loss, meta, episode, cfg)
    per_tensor, _ = get_algorithm("metasgd-layer").client_update(mlp_loss, meta, episode, cfg)
    assert_params_close({k: grouped[k] for k in params}, {k: per_tensor[k] for k in params})
    for names in GROUPS:
        total = sum(per_tensor[LR_PREFIX + n] for n in names)
        for n in names:
            torch.testing.assert_close(grouped[LR_PREFIX + n], total, atol=ATOL, rtol=1e-4)
    assert not torch.allclose(grouped[LR_PREFIX + "w1"], grouped[LR_PREFIX + "w2"])
    with pytest.raises(ValueError, match="rate_groups"):
        get_algorithm("metasgd-group").client_update(mlp_loss, meta, episode, InnerConfig(steps=1))


def test_fomaml_group_is_fomaml_plus_a_first_order_rate_gradient() -> None:
    """One step, rate a_g per group: w' = w - a_g g_s. First order: the initialization's direction is FO-MAML's
    query gradient at w', the group rate's is -sum over the group's tensors of <grad L_q(w'), g_s>."""
    params, episode = mlp_params(), regression_episode()
    rates = {"w1": 0.1, "b1": 0.1, "w2": 0.3, "b2": 0.3}
    meta = {**params, **{LR_PREFIX + k: torch.tensor(v) for k, v in rates.items()}}
    direction, _ = get_algorithm("fomaml-group").client_update(
        mlp_loss, meta, episode, InnerConfig(steps=1, lr=0.123, rate_groups=GROUPS))
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    g_s = dict(zip(params, torch.autograd.grad(mlp_loss(leaves, episode.support), list(leaves.values()))))
    adapted = {k: (v - rates[k] * g_s[k]).requires_grad_(True) for k, v in params.items()}
    g_q = dict(zip(adapted, torch.autograd.grad(mlp_loss(adapted, episode.query), list(adapted.values()))))
    assert_params_close({k: direction[k] for k in params}, g_q)
    for names in GROUPS:
        expected = -sum((g_q[n] * g_s[n]).sum() for n in names)
        for n in names:
            torch.testing.assert_close(direction[LR_PREFIX + n], expected, atol=ATOL, rtol=1e-4)


def test_fomaml_lpft_probes_the_head_then_tunes_everything_and_takes_the_query_gradient_there() -> None:
    """Two inner steps: step 1 moves only the head (w2, b2), step 2 every tensor; the direction is the query
    gradient at that point (first order), and the ``lp-ft`` recipe a new site adapts with reaches the same point."""
    from core.recipes import adapt_with_recipe

    params, episode, lr = mlp_params(), regression_episode(), 0.2
    head = ("w2", "b2")
    direction, _ = get_algorithm("fomaml-lpft").client_update(
        mlp_loss, params, episode, InnerConfig(steps=2, lr=lr, trainable=head))
    current = dict(params)
    for only in (head, tuple(params)):
        leaves = {k: v.clone().requires_grad_(True) for k, v in current.items()}
        grads = dict(zip(leaves, torch.autograd.grad(mlp_loss(leaves, episode.support), list(leaves.values()))))
        current = {k: (v - lr * grads[k] if k in only else v).detach() for k, v in current.items()}
    assert not torch.equal(current["w1"], params["w1"])
    leaves = {k: v.clone().requires_grad_(True) for k, v in current.items()}
    expected = dict(zip(leaves, torch.autograd.grad(mlp_loss(leaves, episode.query), list(leaves.values()))))
    assert_params_close(direction, expected)
    assert_params_close(adapt_with_recipe("lp-ft", mlp_loss, params, episode.support, 2, lr, head=head), current)
    with pytest.raises(ValueError, match="head"):
        get_algorithm("fomaml-lpft").client_update(mlp_loss, params, episode, InnerConfig(steps=2, lr=lr))
