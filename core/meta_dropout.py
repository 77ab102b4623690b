"""Meta-dropout: a meta-training episode's SUPPORT inputs with some features dropped, so the initialization
cannot rely on any one feature of a few examples (the design's meta-overfitting control).

Each entry of the support inputs is zeroed with probability ``p`` and the rest scaled by ``1 / (1 - p)``
(inverted dropout), the same mask for every inner step of the episode; the query, evaluation and onboarding
never see it, nor does FedAvg (the baseline trains on clean rows, so a run with and without meta-dropout has
the same ``fedavg+ft``). The mask is drawn from a stream of (seed, round, site) only, so the in-process engine (looped
or ``vmap``-ed: the mask is part of the episode's data) and a site's own Flower node draw the same episode.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from core.algorithms.base import Algorithm, InnerConfig, split_meta
from core.problem import Problem
from core.seeds import site_generator, site_seed
from core.types import Episode, Params


def drop_support_inputs(episode: Episode, p: float, gen: torch.Generator) -> Episode:
    """``episode`` with its support inputs (``support[0]``, floating point) under inverted dropout ``p``."""
    if not 0 <= p < 1:
        raise ValueError(f"inner.meta_dropout must be in [0, 1), got {p}")
    if p == 0:
        return episode
    if episode.query_fn is not None:
        raise ValueError("inner.meta_dropout drops input features of row data; a rollout task's support is "
                         "collected by the policy itself: use inner.meta_dropout=0 there")
    x, *rest = episode.support
    if not x.is_floating_point():
        raise ValueError(f"inner.meta_dropout needs floating-point inputs, got {x.dtype}")
    keep = (torch.rand(x.shape, generator=gen) >= p).to(device=x.device, dtype=x.dtype)
    return replace(episode, support=(x * keep / (1 - p), *rest))


def meta_training_episode(problem: Problem, site_id: str, meta: Params, seed: int, round_index: int,
                          meta_dropout: float = 0.0) -> Episode:
    """Site ``site_id``'s episode of round ``round_index`` (the one both engines draw), with meta-dropout. A rollout
    task collects its support with the model's parameters only (not learned step sizes ``inner_lr/*``)."""
    episode = problem.train_episode(site_id, split_meta(meta)[0], site_generator(seed, round_index, site_id))
    if meta_dropout <= 0:
        return episode
    gen = torch.Generator().manual_seed(site_seed(seed, round_index, site_id, "meta-dropout"))
    return drop_support_inputs(episode, meta_dropout, gen)


def dropout_for(algorithm: Algorithm, inner: InnerConfig) -> float:
    """The meta-dropout an algorithm's episodes get: ``inner.meta_dropout`` for a meta-learner, 0 for FedAvg
    (the baseline trains on clean rows), in both engines."""
    return inner.meta_dropout if algorithm.is_meta else 0.0
