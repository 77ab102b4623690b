"""The tiny algorithm API: a pure client update ``(loss_fn, meta, episode, cfg) -> (direction, metrics)``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from core.registry import Registry
from core.types import Episode, LossFn, Params

#: Prefix of extra meta-parameters that are per-parameter inner step sizes (Meta-SGD).
LR_PREFIX = "inner_lr/"
#: What ``inner.meta_dropout_at`` may name (:mod:`core.meta_dropout`).
META_DROPOUT_SITES = ("input", "features")


@dataclass(frozen=True)
class InnerConfig:
    """Inner-loop hyper-parameters shared by all algorithms.

    Args:
        steps: inner gradient steps on the support set (local steps for FedAvg).
        lr: inner step size.
        weight_decay: L2 regularization of the adapted weights.
        proximal: pull of the adapted weights toward the initialization.
        group: the parameters the inner loop of MAML / FO-MAML / Reptile adapts in meta-training: ``all``,
            ``head`` (ANIL, Raghu et al. 2020), ``body`` (BOIL, Oh et al. 2021) or ``context``, a group of
            :meth:`core.problem.Problem.param_groups`; the other parameters are still meta-learned.
        trainable: the names of that group (resolved by the learner; empty = every parameter).
        rate_groups: the names of each of the problem's parameter groups (resolved by the learner), whose
            step sizes ``metasgd-group`` / ``fomaml-group`` learn one per group.
        meta_dropout: drop probability of the support's entries in meta-training episodes
            (:mod:`core.meta_dropout`) of the meta-learners (not FedAvg); never at evaluation or onboarding.
        meta_dropout_at: where those masks apply: ``input`` (the support's inputs) or ``features`` (the input of
            the model's head module, the body's features).
    """

    steps: int = 5
    lr: float = 0.05
    weight_decay: float = 0.0
    proximal: float = 0.0
    group: str = "all"
    trainable: tuple[str, ...] = ()
    rate_groups: tuple[tuple[str, ...], ...] = ()
    meta_dropout: float = 0.0
    meta_dropout_at: str = "input"

    def adapt_kwargs(self) -> dict:
        """The regularization of adaptation (what evaluation and onboarding reuse)."""
        return {"weight_decay": self.weight_decay, "proximal": self.proximal}

    def inner_kwargs(self) -> dict:
        """:meth:`adapt_kwargs` plus the adapted group, for the inner loop of meta-training."""
        return {**self.adapt_kwargs(), "trainable": self.trainable or None}


#: What a client update returns: ``(direction, metrics)``, ``direction`` keyed and shaped like the
#: meta-parameters, ``metrics`` scalar tensors keyed ``train/...``.
ClientResult = tuple[Params, dict[str, torch.Tensor]]
#: ``client_update(loss_fn, meta, episode, cfg) -> (direction, metrics)``; pure and vmap-able when
#: ``Algorithm.vectorizable``. ``direction`` is keyed like ``meta`` and is applied by the server
#: optimizer as a gradient (``meta -= server_lr * direction``).
ClientUpdateFn = Callable[[LossFn, Params, Episode, InnerConfig], ClientResult]


def no_extra(params: Params, cfg: InnerConfig) -> Params:
    return {}


@dataclass(frozen=True)
class Algorithm:
    """A registered federated (meta-)learning algorithm.

    Args:
        name: registry name.
        client_update: the pure client computation.
        init_extra: extra meta-parameters it learns beside the model's (Meta-SGD's step sizes).
        is_meta: whether it meta-learns (FedAvg does not: its server default is SGD lr 1).
        vectorizable: whether clients of a round may run in one ``vmap`` call.
        supports_rollouts: whether it accepts episodes whose query is produced from adapted weights.
        inner_group: the parameter group its inner loop always adapts (CAVIA: ``context``), whatever
            ``inner.group`` says; None = ``inner.group``.
        recipe: the adaptation recipe its inner loop IS, used at evaluation and onboarding (``r2d2``:
            ``newton-head``); None = the recipe of its inner-loop group.
        trains_outside_group: whether its direction moves parameters its inner loop does not adapt (FO-MAML's
            query gradient does; Reptile's ``init - adapted`` is zero there, so with ``inner.group`` they keep
            their initialization).
    """

    name: str
    client_update: ClientUpdateFn
    summary: str
    init_extra: Callable[[Params, InnerConfig], Params] = no_extra
    is_meta: bool = True
    vectorizable: bool = True
    supports_rollouts: bool = True
    inner_group: Optional[str] = None
    recipe: Optional[str] = None
    trains_outside_group: bool = True


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")


def get_algorithm(name: str) -> Algorithm:
    return ALGORITHMS.get(name)


def split_meta(meta: Params) -> tuple[Params, Params | None]:
    """Split meta-parameters into model parameters and per-parameter inner step sizes (or None)."""
    params = {k: v for k, v in meta.items() if not k.startswith(LR_PREFIX)}
    lrs = {k[len(LR_PREFIX):]: v for k, v in meta.items() if k.startswith(LR_PREFIX)}
    return params, (lrs or None)


def concat_batches(a: tuple, b: tuple) -> tuple:
    return tuple(torch.cat([u, v], dim=0) for u, v in zip(a, b))
