"""Server side of a round: FedAvg vs the textbook, aggregation, server optimizers, sampling (issue 3, tests 2 and 6)."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from core.aggregation import aggregate, client_weights, stack_updates, weighted_mean
from core.algorithms import InnerConfig, get_algorithm
from core.rounds import client_updates
from core.sampling import sample_clients
from core.server import SERVER_OPTIMIZERS, make_server_optimizer, set_direction_as_grad
from core.types import ClientUpdate, Episode, Params


def linear_loss(params: Params, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return ((x @ params["w"] + params["b"] - y) ** 2).mean()


def toy_clients(n: int, seed: int = 0, rows: int = 6) -> list[Episode]:
    """Clients with different linear targets (non-IID), ``rows`` support + ``rows`` query rows each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        w_true = torch.randn(3, generator=g)
        x = torch.randn(2 * rows, 3, generator=g)
        y = x @ w_true + 0.1 * torch.randn(2 * rows, generator=g)
        out.append(Episode(support=(x[:rows], y[:rows]), query=(x[rows:], y[rows:]), site_id=f"client-{i}"))
    return out


def textbook_local_training(w: Tensor, b: Tensor, episode: Episode, steps: int, lr: float) -> tuple[Tensor, Tensor]:
    """Local SGD with plain autograd on all of the client's data (support + query)."""
    x = torch.cat([episode.support[0], episode.query[0]])
    y = torch.cat([episode.support[1], episode.query[1]])
    w, b = w.clone(), b.clone()
    for _ in range(steps):
        w.requires_grad_(True)
        b.requires_grad_(True)
        loss = ((x @ w + b - y) ** 2).mean()
        gw, gb = torch.autograd.grad(loss, [w, b])
        w, b = (w - lr * gw).detach(), (b - lr * gb).detach()
    return w, b


class Holder(nn.Module):
    def __init__(self, params: Params) -> None:
        super().__init__()
        self.w = nn.Parameter(params["w"].clone())
        self.b = nn.Parameter(params["b"].clone())

    def named(self) -> dict[str, nn.Parameter]:
        return dict(self.named_parameters())


# ---------------------------------------------------------------- 2. FedAvg = textbook FedAvg
@pytest.mark.parametrize("weighting", ["uniform", "num_examples"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_fedavg_with_server_sgd_lr1_is_textbook_fedavg(weighting: str, vectorize: bool) -> None:
    episodes = toy_clients(4)
    if weighting == "num_examples":  # unequal sizes: textbook weights n_k / n
        episodes[0] = toy_clients(1, seed=7, rows=10)[0]
    params = {"w": torch.zeros(3), "b": torch.zeros(())}
    holder = Holder(params)
    opt = make_server_optimizer("sgd", holder.parameters(), lr=1.0)
    cfg = InnerConfig(steps=5, lr=0.05)
    for _ in range(3):  # three rounds
        meta = {k: v.detach() for k, v in holder.named().items()}
        locals_ = [textbook_local_training(meta["w"], meta["b"], e, 5, 0.05) for e in episodes]
        sizes = torch.tensor([e.support[0].shape[0] + e.query[0].shape[0] for e in episodes], dtype=torch.float64)
        p = torch.ones(len(episodes), dtype=torch.float64) if weighting == "uniform" else sizes
        p = (p / p.sum()).float()
        expected_w = sum(pi * w for pi, (w, _) in zip(p, locals_))
        expected_b = sum(pi * b for pi, (_, b) in zip(p, locals_))

        result = client_updates(get_algorithm("fedavg"), linear_loss, meta, episodes, cfg, vectorize=vectorize)
        direction = aggregate(result.directions, client_weights(result.num_examples, weighting))
        opt.zero_grad()
        set_direction_as_grad(holder.named(), direction)
        opt.step()
        torch.testing.assert_close(holder.w.detach(), expected_w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(holder.b.detach(), expected_b, atol=1e-6, rtol=1e-5)


def test_fedavg_of_identical_clients_is_identity() -> None:
    """Identical clients: the new global model is exactly that one client's local model."""
    episode = toy_clients(1)[0]
    episodes = [Episode(episode.support, episode.query, f"copy-{i}") for i in range(5)]
    params = {"w": torch.randn(3, generator=torch.Generator().manual_seed(1)), "b": torch.zeros(())}
    cfg = InnerConfig(steps=3, lr=0.1)
    result = client_updates(get_algorithm("fedavg"), linear_loss, params, episodes, cfg)
    direction = aggregate(result.directions, client_weights(result.num_examples, "num_examples"))
    single, _ = get_algorithm("fedavg").client_update(linear_loss, params, episode, cfg)
    for k in params:
        torch.testing.assert_close(direction[k], single[k], atol=1e-7, rtol=1e-6)
    # and the mean of identical directions is that direction for every rule and weighting
    stacked = {"a": torch.randn(2, 3).expand(4, 2, 3).clone()}
    for rule in ("mean", "median", "trimmed_mean"):
        out = aggregate(stacked, torch.tensor([0.1, 0.2, 0.3, 0.4]), rule)
        torch.testing.assert_close(out["a"], stacked["a"][0])


# ---------------------------------------------------------------- aggregation
def test_client_weights() -> None:
    torch.testing.assert_close(client_weights([10, 30], "uniform"), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(client_weights([10, 30], "num_examples"), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(weighted_mean({"a": torch.tensor([[1.0], [5.0]])}, torch.tensor([0.25, 0.75]))["a"],
                               torch.tensor([4.0]))


def test_aggregation_is_by_name_not_position() -> None:
    """Clients that send their parameters in different orders are aggregated by name."""
    u1 = ClientUpdate({"a": torch.tensor([1.0]), "b": torch.tensor([10.0, 10.0])}, 1, client_id="one")
    u2 = ClientUpdate({"b": torch.tensor([30.0, 30.0]), "a": torch.tensor([3.0])}, 1, client_id="two")
    stacked, sizes = stack_updates([u1, u2])
    out = aggregate(stacked, client_weights(sizes, "uniform"))
    torch.testing.assert_close(out["a"], torch.tensor([2.0]))
    torch.testing.assert_close(out["b"], torch.tensor([20.0, 20.0]))
    # the server writes gradients by name too, whatever the dict order
    holder = Holder({"w": torch.zeros(3), "b": torch.zeros(())})
    set_direction_as_grad(holder.named(), {"b": torch.tensor(2.0), "w": torch.tensor([1.0, 2.0, 3.0])})
    torch.testing.assert_close(holder.w.grad, torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(holder.b.grad, torch.tensor(2.0))


def test_round_result_updates_roundtrip() -> None:
    episodes = toy_clients(3)
    params = {"w": torch.zeros(3), "b": torch.zeros(())}
    result = client_updates(get_algorithm("fomaml"), linear_loss, params, episodes, InnerConfig(steps=2, lr=0.1))
    updates = result.updates()
    assert [u.client_id for u in updates] == ["client-0", "client-1", "client-2"]
    assert all(u.num_examples == 12 for u in updates)
    stacked, _ = stack_updates(updates)
    for k in stacked:
        torch.testing.assert_close(stacked[k], result.directions[k])


def test_robust_rules() -> None:
    stacked = {"a": torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])}
    w = client_weights([1] * 5, "uniform")
    assert aggregate(stacked, w, "median")["a"].item() == 2.0
    assert aggregate(stacked, w, "trimmed_mean")["a"].item() == pytest.approx(2.0)
    assert aggregate(stacked, w, "mean")["a"].item() == pytest.approx(21.2)


# ---------------------------------------------------------------- server optimizers
def test_server_optimizer_registry_lists_the_four() -> None:
    assert {"sgd", "adam", "adagrad", "yogi"} <= set(SERVER_OPTIMIZERS.names())


def _two_steps(name: str, lr: float, grads: list[Tensor]) -> Tensor:
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = make_server_optimizer(name, [p], lr)
    for g in grads:
        opt.zero_grad()
        set_direction_as_grad({"p": p}, {"p": g})
        opt.step()
    return p.detach()


GRADS = [torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.1, 0.5, -4.0])]


def test_fedadam_step() -> None:
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    x, m, v = torch.tensor([1.0, -2.0, 0.5]), torch.zeros(3), torch.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    torch.testing.assert_close(_two_steps("adam", lr, GRADS), x)


def test_fedadagrad_step() -> None:
    lr, eps = 0.1, 1e-10
    x, v = torch.tensor([1.0, -2.0, 0.5]), torch.zeros(3)
    for g in GRADS:
        v = v + g * g
        x = x - lr * g / (v.sqrt() + eps)
    torch.testing.assert_close(_two_steps("adagrad", lr, GRADS), x)


def test_fedyogi_step() -> None:
    """Reddi et al. 2021, Algorithm 2 (FedYogi): v <- v - (1-b2) g^2 sign(v - g^2); x <- x - lr m / (sqrt(v) + tau)."""
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x, m, v = torch.tensor([1.0, -2.0, 0.5]), torch.zeros(3), torch.full((3,), tau**2)
    for g in GRADS:
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * g * g * torch.sign(v - g * g)
        x = x - lr * m / (v.sqrt() + tau)
    torch.testing.assert_close(_two_steps("yogi", lr, GRADS), x)


def test_server_sgd_step() -> None:
    torch.testing.assert_close(_two_steps("sgd", 0.5, GRADS), torch.tensor([1.0, -2.0, 0.5]) - 0.5 * (GRADS[0] + GRADS[1]))


# ---------------------------------------------------------------- sampling
IDS = [f"s{i}" for i in range(20)]
SIZES = [10] * 19 + [10_000]


@pytest.mark.parametrize("strategy", ["uniform", "size"])
def test_sampling_is_seeded_and_distinct(strategy: str) -> None:
    a = sample_clients(IDS, SIZES, 5, torch.Generator().manual_seed(3), strategy)
    b = sample_clients(IDS, SIZES, 5, torch.Generator().manual_seed(3), strategy)
    c = sample_clients(IDS, SIZES, 5, torch.Generator().manual_seed(4), strategy)
    assert a == b and len(set(a)) == 5 and set(a) <= set(IDS)
    draws = [sample_clients(IDS, SIZES, 5, torch.Generator().manual_seed(s), strategy) for s in range(10)]
    assert any(d != a for d in draws) or c != a


def test_size_weighted_sampling_prefers_large_sites() -> None:
    hits = sum("s19" in sample_clients(IDS, SIZES, 2, torch.Generator().manual_seed(s), "size") for s in range(50))
    assert hits >= 45  # ~ always picked (weight 10000 vs 190)
    hits = sum("s19" in sample_clients(IDS, SIZES, 2, torch.Generator().manual_seed(s), "uniform") for s in range(50))
    assert hits < 20  # ~ 10% of draws


def test_sampling_caps_at_population_and_dropout_keeps_one() -> None:
    assert sorted(sample_clients(IDS[:3], SIZES[:3], 10, torch.Generator().manual_seed(0))) == IDS[:3]
    kept = sample_clients(IDS, SIZES, 10, torch.Generator().manual_seed(0), dropout=1.0)
    assert len(kept) == 1
    some = sample_clients(IDS, SIZES, 10, torch.Generator().manual_seed(0), dropout=0.5)
    assert 1 <= len(some) <= 10
