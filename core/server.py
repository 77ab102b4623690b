"""Server optimizers: the aggregated direction is applied as the gradient of the meta-parameters.

Adaptive Federated Optimization (Reddi et al. 2021): FedAvg = SGD (lr 1 is textbook FedAvg),
FedAdam = Adam, FedAdagrad = Adagrad (``torch.optim``), FedYogi = Yogi (below; torch has no Yogi).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from core.registry import Registry
from core.types import Params


class Yogi(torch.optim.Optimizer):
    """Yogi (Zaheer et al. 2018) as used by FedYogi: ``v <- v - (1-b2) g^2 sign(v - g^2)``."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-2, betas=(0.9, 0.99), eps: float = 1e-3):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.full_like(p, group["eps"] ** 2)
                m, v = state["m"], state["v"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                g2 = g * g
                v.sub_((1 - b2) * g2 * torch.sign(v - g2))
                p.sub_(group["lr"] * m / (v.sqrt() + group["eps"]))


OptimizerFactory = Callable[..., torch.optim.Optimizer]
SERVER_OPTIMIZERS: Registry[OptimizerFactory] = Registry("server optimizer")
SERVER_OPTIMIZERS.register("sgd", lambda ps, lr, momentum=0.0: torch.optim.SGD(ps, lr=lr, momentum=momentum))
SERVER_OPTIMIZERS.register("adam", lambda ps, lr, eps=1e-8: torch.optim.Adam(ps, lr=lr, eps=eps))
SERVER_OPTIMIZERS.register("adagrad", lambda ps, lr, eps=1e-10: torch.optim.Adagrad(ps, lr=lr, eps=eps))
SERVER_OPTIMIZERS.register("yogi", lambda ps, lr, eps=1e-3: Yogi(ps, lr=lr, eps=eps))


def make_server_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, **kwargs) -> torch.optim.Optimizer:
    """Build the server optimizer ``name`` (sgd | adam | adagrad | yogi) over the meta-parameters."""
    return SERVER_OPTIMIZERS.get(name)(list(params), lr, **kwargs)


def set_direction_as_grad(named: dict[str, nn.Parameter], direction: Params) -> None:
    """Write the aggregated direction into ``.grad`` by parameter name (the server then steps)."""
    missing = named.keys() - direction.keys()
    if missing:
        raise ValueError(f"aggregated direction lacks parameters {sorted(missing)}")
    for k, p in named.items():
        p.grad = direction[k].detach().to(p.dtype).clone()
