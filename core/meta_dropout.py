"""Meta-dropout: a meta-training episode's SUPPORT under dropout masks, so the initialization cannot rely on any one
input feature or latent feature of a few examples (the design's meta-overfitting control).

Where the masks apply (``inner.meta_dropout_at``):

- ``input``: each entry of the support inputs is zeroed with probability ``p`` and the rest scaled by
  ``1 / (1 - p)`` (inverted dropout);
- ``features``: the same on the INPUT of the problem's ``head`` module, the body's features (Lee et al. ICLR 2020
  perturb latent features for the same reason). The mask travels with the batch as its last tensor (the support's
  drawn, the query's all ones), and :meth:`MetaDropout.loss` applies it with a forward pre-hook on the head, so the
  inner loop's every step sees it and the query loss does not.

Either way it is the same mask for every inner step of the episode; the query, evaluation and onboarding never see it,
nor does FedAvg (the baseline trains on clean rows, so a run with and without meta-dropout has the same
``fedavg+ft``). The mask is drawn from a stream of (seed, round, site) only, so the in-process engine (looped or
``vmap``-ed: the mask is part of the episode's data) and a site's own Flower node draw the same episode.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import nn

from core.algorithms.base import META_DROPOUT_SITES, Algorithm, InnerConfig, split_meta
from core.problem import Problem
from core.recipes import head_names
from core.seeds import site_generator, site_seed
from core.types import Batch, Episode, LossFn, Params


def _inverted_mask(shape: torch.Size, p: float, gen: torch.Generator) -> torch.Tensor:
    """``1 / (1 - p)`` where kept, 0 where dropped (probability ``p``), drawn on the CPU from ``gen``."""
    return (torch.rand(shape, generator=gen) >= p).float() / (1 - p)


def _check(episode: Episode, p: float) -> None:
    if not 0 <= p < 1:
        raise ValueError(f"inner.meta_dropout must be in [0, 1), got {p}")
    if p and episode.query_fn is not None:
        raise ValueError("inner.meta_dropout drops features of row data; a rollout task's support is "
                         "collected by the policy itself: use inner.meta_dropout=0 there")


def drop_support_inputs(episode: Episode, p: float, gen: torch.Generator) -> Episode:
    """``episode`` with its support inputs (``support[0]``, floating point) under inverted dropout ``p``."""
    _check(episode, p)
    if p == 0:
        return episode
    x, *rest = episode.support
    if not x.is_floating_point():
        raise ValueError(f"inner.meta_dropout needs floating-point inputs, got {x.dtype}")
    keep = (torch.rand(x.shape, generator=gen) >= p).to(device=x.device, dtype=x.dtype)
    return replace(episode, support=(x * keep / (1 - p), *rest))  # this order: committed lines reproduce bit for bit


def mask_support_features(episode: Episode, p: float, gen: torch.Generator, feature_shape: tuple[int, ...]) -> Episode:
    """``episode`` with a feature mask appended to each batch: ``[n_support, *feature_shape]`` under inverted dropout
    ``p`` to the support, ones to the query (its loss is the clean one)."""
    _check(episode, p)
    n_s, n_q = episode.support[0].shape[0], (episode.query[0].shape[0] if episode.query else 0)
    support = (*episode.support, _inverted_mask(torch.Size((n_s, *feature_shape)), p, gen))
    query = (*episode.query, torch.ones(n_q, *feature_shape)) if episode.query else episode.query
    return replace(episode, support=support, query=query)


@dataclass(frozen=True)
class MetaDropout:
    """One learner's meta-dropout: probability ``p`` at ``at`` (:data:`core.algorithms.base.META_DROPOUT_SITES`); for
    ``features`` the head module whose input is masked and the shape of one row of that input."""

    p: float = 0.0
    at: str = "input"
    head: Optional[nn.Module] = None
    feature_shape: tuple[int, ...] = ()

    @property
    def on_features(self) -> bool:
        return self.p > 0 and self.at == "features"

    def episode(self, problem: Problem, site_id: str, meta: Params, seed: int, round_index: int) -> Episode:
        """Site ``site_id``'s episode of round ``round_index`` (the one both engines draw), under these masks. A
        rollout task collects its support with the model's parameters only (not learned step sizes ``inner_lr/*``)."""
        episode = problem.train_episode(site_id, split_meta(meta)[0], site_generator(seed, round_index, site_id))
        if self.p <= 0:
            return episode
        gen = torch.Generator().manual_seed(site_seed(seed, round_index, site_id, "meta-dropout"))
        if self.on_features:
            return mask_support_features(episode, self.p, gen, self.feature_shape)
        return drop_support_inputs(episode, self.p, gen)

    def loss(self, loss_fn: LossFn) -> LossFn:
        """``loss_fn`` for this dropout's episodes: with ``features``, every batch's last tensor is the mask of the
        head's input (applied by a pre-hook for the call); otherwise ``loss_fn`` itself."""
        if not self.on_features:
            return loss_fn
        head = self.head
        assert head is not None

        def masked(params: Params, batch: Batch) -> torch.Tensor:
            *data, mask = batch

            def hook(module: nn.Module, args: tuple) -> tuple:
                return (args[0] * mask.to(args[0].dtype), *args[1:])

            handle = head.register_forward_pre_hook(hook)
            try:
                return loss_fn(params, tuple(data))
            finally:
                handle.remove()

        return masked


def head_module(model: nn.Module) -> tuple[str, nn.Module]:
    """The module owning the model's head parameters (:func:`core.recipes.head_names`) and its name."""
    names = head_names(model)
    if not names:
        raise ValueError("inner.meta_dropout_at=features masks the input of the model's head, and this model has "
                         "no parameters")
    owner = names[0].rpartition(".")[0]
    return owner, model.get_submodule(owner)


def feature_shape(model: nn.Module, head: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """The shape of one row of ``head``'s input when ``model`` runs on ``example`` (a small batch)."""
    seen: list[tuple[int, ...]] = []
    handle = head.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[1:])))
    try:
        with torch.no_grad():
            model(example.to(next(model.parameters()).device))
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(f"inner.meta_dropout_at=features needs the head to run once per forward; it ran {len(seen)} "
                         "times: use inner.meta_dropout_at=input")
    return seen[0]


def meta_dropout_for(problem: Problem, model: nn.Module, algorithm: Algorithm, inner: InnerConfig) -> MetaDropout:
    """The meta-dropout an algorithm's episodes get: ``inner.meta_dropout`` at ``inner.meta_dropout_at`` for a
    meta-learner, none for FedAvg (the baseline trains on clean rows), in both engines."""
    if inner.meta_dropout_at not in META_DROPOUT_SITES:
        raise ValueError(f"inner.meta_dropout_at {inner.meta_dropout_at!r}: choose one of "
                         f"{', '.join(META_DROPOUT_SITES)}")
    if not algorithm.is_meta or inner.meta_dropout <= 0:
        return MetaDropout()
    if inner.meta_dropout_at == "input":
        return MetaDropout(inner.meta_dropout)
    _, head = head_module(model)
    return MetaDropout(inner.meta_dropout, "features", head, feature_shape(model, head, problem.input_example()))

