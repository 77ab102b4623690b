"""One federated round's client computation: all clients in one ``vmap`` call when their episode
shapes agree, else a per-client loop that gives the same numbers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch.func import vmap

from core.algorithms.base import Algorithm, InnerConfig
from core.tasks import stack_episodes
from core.types import ClientUpdate, Episode, LossFn, Params


@dataclass
class RoundResult:
    """Stacked client results: ``directions[name]`` is ``[clients, ...]``."""

    directions: Params
    num_examples: Tensor
    metrics: dict[str, Tensor]
    client_ids: list[str]
    vectorized: bool

    def updates(self) -> list[ClientUpdate]:
        return [
            ClientUpdate(
                direction={k: v[i] for k, v in self.directions.items()},
                num_examples=int(self.num_examples[i]),
                metrics={k: float(v[i]) for k, v in self.metrics.items()},
                client_id=cid,
            )
            for i, cid in enumerate(self.client_ids)
        ]


def _episode_size(e: Episode) -> int:
    return int(e.support[0].shape[0]) + (int(e.query[0].shape[0]) if e.query else 0)


def client_updates(
    algorithm: Algorithm,
    loss_fn: LossFn,
    meta: Params,
    episodes: Sequence[Episode],
    cfg: InnerConfig,
    vectorize: bool = True,
) -> RoundResult:
    """Run ``algorithm.client_update`` for every episode of the round."""
    if any(e.query_fn is not None for e in episodes) and not algorithm.supports_rollouts:
        raise ValueError(
            f"algorithm {algorithm.name!r} needs a fixed query set; rollout tasks support "
            "fomaml, reptile and perfedavg"
        )
    meta = {k: v.detach() for k, v in meta.items()}
    sizes = torch.tensor([_episode_size(e) for e in episodes])
    ids = [e.site_id for e in episodes]
    stacked = stack_episodes(episodes) if (vectorize and algorithm.vectorizable) else None
    if stacked is not None:
        n_s = len(stacked.support)

        def one(*tensors: Tensor):
            ep = Episode(support=tuple(tensors[:n_s]), query=tuple(tensors[n_s:]))
            return algorithm.client_update(loss_fn, meta, ep, cfg)

        directions, metrics = vmap(one, randomness="same")(*stacked.support, *stacked.query)
        return RoundResult(directions, sizes, metrics, ids, True)
    results = [algorithm.client_update(loss_fn, meta, e, cfg) for e in episodes]
    directions = {k: torch.stack([d[k] for d, _ in results]) for k in results[0][0]}
    metrics = {k: torch.stack([m[k].detach() for _, m in results]) for k in results[0][1]}
    return RoundResult({k: v.detach() for k, v in directions.items()}, sizes, metrics, ids, False)
