"""Per-FedAvg (Fallah, Mokhtari, Ozdaglar 2020, "Personalized Federated Learning with Theoretical
Guarantees: A Model-Agnostic Meta-Learning Approach").

One inner step ``theta' = theta - a * grad L(theta; D_s)``, then the direction
- FO: ``grad L(theta'; D_q)``;
- HF: ``grad L(theta'; D_q) - a * H(theta; D_s) grad L(theta'; D_q)``, the Hessian-vector product computed
  exactly by forward-over-reverse differentiation (the paper's finite-difference estimate converges to it).
The Hessian batch is the support batch (the paper's D'' drawn from the same client data).
"""
from __future__ import annotations

from functools import partial

from torch.func import grad, jvp

from core.adapt import adapt
from core.algorithms.base import ALGORITHMS, Algorithm, InnerConfig
from core.types import Episode, LossFn, Params


def perfedavg_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig, *, hessian_free: bool):
    adapted = adapt(loss_fn, meta, episode.support, 1, cfg.lr, first_order=True, **cfg.adapt_kwargs())
    query = episode.query_for(adapted)
    g_query = grad(loss_fn)(adapted, query)
    direction = g_query
    if hessian_free:
        support_grad = lambda p: grad(loss_fn)(p, episode.support)  # noqa: E731
        _, hvp = jvp(support_grad, (meta,), (g_query,))
        direction = {k: g_query[k] - cfg.lr * hvp[k] for k in g_query}
    return direction, {"train/support_loss_before": loss_fn(meta, episode.support),
                       "train/query_loss": loss_fn(adapted, query)}


ALGORITHMS.register(
    "perfedavg", Algorithm("perfedavg", partial(perfedavg_update, hessian_free=False), "Per-FedAvg, first-order")
)
ALGORITHMS.register(
    "perfedavg-hf",
    Algorithm("perfedavg-hf", partial(perfedavg_update, hessian_free=True),
              "Per-FedAvg, Hessian-free (exact Hessian-vector product)", supports_rollouts=False),
)
