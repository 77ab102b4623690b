"""Policy-gradient pieces as pure functions: returns, a linear baseline, GAE, and the surrogate losses.

The surrogate is what the core's ONE ``adapt()`` differentiates, so the inner loop of meta-RL is the
same code as supervised adaptation (MAML for RL, Finn et al. 2017). Every surrogate has the REINFORCE
gradient ``-E[grad log pi(a|s) A]`` at the parameters that collected the batch (Williams 1992); ``ratio``
and ``ppo`` (Schulman et al. 2017) also keep later steps on the same batch well posed.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from core.registry import Registry

LOG_2PI = 1.8378770664093453
#: Bounds of the policy's log standard deviation (actions live in [-1, 1]): REINFORCE on a FIXED batch is
#: unbounded below in ``log_std`` (shrinking the noise around good actions raises their log-density
#: without limit), so a few large inner steps would otherwise drive it to -inf and the policy to NaN.
LOG_STD_MIN, LOG_STD_MAX = -2.5, 1.0

#: ``surrogate(logp [M], logp_old [M], adv [M]) -> scalar loss``.
Surrogate = Callable[[Tensor, Tensor, Tensor], Tensor]
SURROGATES: Registry[Surrogate] = Registry("policy-gradient surrogate")


def probability_ratio(logp: Tensor, logp_old: Tensor) -> Tensor:
    """``pi/pi_old = exp(logp - logp_old)`` in value and gradient (``ratio * grad logp``), with REINFORCE's second
    derivative (``ratio * hess logp``): the exponential's own adds ``ratio * grad logp grad logp^T``, the
    high-variance score term of DiCE-style estimators, which second-order meta-training (CAVIA) differentiates and
    which made it collapse on some seeds (measured; verticals/robotics/README.md)."""
    ratio = torch.exp(logp - logp_old).detach()
    return ratio * (1 + (logp - logp.detach()))  # = ratio exactly: the bracket is 1 + 0


def _ppo(logp: Tensor, logp_old: Tensor, adv: Tensor) -> Tensor:
    ratio = probability_ratio(logp, logp_old)
    return -torch.minimum(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv).mean()


SURROGATES.register("reinforce", lambda logp, logp_old, adv: -(logp * adv).mean())
SURROGATES.register("ratio", lambda logp, logp_old, adv: -(probability_ratio(logp, logp_old) * adv).mean())
SURROGATES.register("ppo", _ppo)


def bounded_log_std(log_std: Tensor) -> Tensor:
    return log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


def gaussian_logp(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log-density of ``actions [..., a]`` under a diagonal Gaussian with std ``exp(bounded log_std)``,
    summed over the action axis."""
    log_std = bounded_log_std(log_std)
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * LOG_2PI).sum(-1)


def discounted_cumsum(x: Tensor, discount: float) -> Tensor:
    """``y[:, t] = sum_k discount^k x[:, t + k]`` for ``x [n, T]`` (one matmul with ``discount^(k - t)``)."""
    horizon = x.shape[1]
    idx = torch.arange(horizon, dtype=x.dtype)
    power = idx[:, None] - idx[None, :]  # [k, t] = k - t
    weights = torch.where(power >= 0, discount ** power.clamp(min=0), torch.zeros((), dtype=x.dtype))
    return x @ weights


def linear_baseline(obs: Tensor, returns: Tensor, reg: float = 1e-5) -> Tensor:
    """Value estimates ``[n, T]`` from a ridge regression of ``returns`` on time and observation features
    (the linear feature baseline of Duan et al. 2016, used by MAML's RL experiments)."""
    n, horizon, _ = obs.shape
    t = (torch.arange(horizon, dtype=obs.dtype) / horizon).expand(n, horizon)[..., None]
    o = obs.clamp(-10, 10)
    feats = torch.cat([o, o * o, t, t * t, t**3, torch.ones_like(t)], dim=-1).reshape(n * horizon, -1)
    gram = feats.T @ feats + reg * torch.eye(feats.shape[1], dtype=feats.dtype)
    coef = torch.linalg.solve(gram, feats.T @ returns.reshape(-1))
    return (feats @ coef).reshape(n, horizon)


def advantages(obs: Tensor, rewards: Tensor, gamma: float, lam: float, normalize: bool = True) -> Tensor:
    """GAE(gamma, lambda) advantages ``[n, T]`` (Schulman et al. 2016) with the linear baseline;
    ``lam = 1`` is REINFORCE with a baseline. Episodes are fixed-length (value 0 after the horizon)."""
    obs, rewards = obs.double(), rewards.double()
    values = linear_baseline(obs, discounted_cumsum(rewards, gamma))
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    adv = discounted_cumsum(rewards + gamma * next_values - values, gamma * lam)
    if normalize and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv.float()
