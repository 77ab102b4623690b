"""The policy: a Gaussian MLP (MAML's RL policy, Finn et al. 2017) used through ``functional_call``.

``forward(obs)`` returns the mean action (what is deployed); the state-independent ``log_std`` is a
parameter too (used clamped to ``[LOG_STD_MIN, LOG_STD_MAX]``, see ``pg.py``), so adaptation can also
change how much a robot explores. With ``context_dim`` > 0 the network also reads a zero-initialized context
vector (CAVIA, :mod:`core.context`) appended to every observation.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from core.context import ContextVector, append_context
from core.types import Params
from verticals.robotics.pg import bounded_log_std


class GaussianMLPPolicy(nn.Module):
    """``obs [n, obs_dim] -> mean action [n, act_dim]``, with a learned ``log_std [act_dim]``.

    Args:
        obs_dim: observation size.
        act_dim: action size (actions live in ``[-1, 1]``; the environment clips).
        hidden: hidden layer widths (ReLU).
        init_log_std: initial log standard deviation of the actions.
        context_dim: size of the context vector the network reads beside the observation (0 = none).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), init_log_std: float = -0.5,
                 context_dim: int = 0):
        super().__init__()
        self.context = ContextVector(context_dim) if context_dim > 0 else None
        layers: list[nn.Module] = []
        width = obs_dim + context_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, act_dim))
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs if self.context is None else self.context(obs))


def mean_fn(model: nn.Module, params: Params) -> Callable[[Tensor], Tensor]:
    """``obs -> mean action`` of ``model`` at ``params``: a direct pass through the linear layers for
    :class:`GaussianMLPPolicy` (rollouts call it once per step, ``functional_call`` costs ~0.5 ms a call),
    ``functional_call`` for any other module. Both give the same numbers (tested)."""
    if not isinstance(model, GaussianMLPPolicy):
        return lambda obs: functional_call(model, params, (obs,))
    layers = [(params[f"net.{i}.weight"], params[f"net.{i}.bias"])
              for i, m in enumerate(model.net) if isinstance(m, nn.Linear)]
    context = params["context.context"] if model.context is not None else None

    def mean(obs: Tensor) -> Tensor:
        h = obs if context is None else append_context(obs, context)
        for j, (w, b) in enumerate(layers):
            h = torch.nn.functional.linear(h, w, b)
            if j < len(layers) - 1:
                h = torch.relu(h)
        return h

    return mean


def sampling_actor(model: nn.Module, params: Params, gen: torch.Generator, episodes: int, horizon: int
                   ) -> Callable[[Tensor], Tensor]:
    """``act(obs [episodes, o]) -> a ~ N(mean(obs), exp(log_std))``, called once per step for ``horizon``
    steps; the noise of the whole rollout is drawn from ``gen`` up front (one call, same numbers)."""
    params = {k: v.detach() for k, v in params.items()}
    std = torch.exp(bounded_log_std(params["log_std"]))
    mean_of = mean_fn(model, params)
    noise = torch.randn((horizon, episodes, std.shape[0]), generator=gen) * std
    step = iter(range(horizon))

    def act(obs: Tensor) -> Tensor:
        with torch.no_grad():
            return mean_of(obs) + noise[next(step)]

    return act
