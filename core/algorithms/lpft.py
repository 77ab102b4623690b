"""FO-MAML whose inner loop IS the LP-FT schedule (Kumar et al. ICLR 2022): the head alone for the first half
of the inner steps, then every parameter (:func:`core.recipes.lp_ft`), so the initialization is meta-trained for
the adaptation a new site runs with it (the ``lp-ft`` recipe at evaluation and onboarding).

A linear probe first keeps a head fitted to the training sites from dragging the body's features toward it on
a new site's few examples (the LP-FT argument); meta-training through the schedule makes the body expect it.
"""
from __future__ import annotations

from core.algorithms.base import ALGORITHMS, Algorithm, ClientResult, InnerConfig
from core.autodiff import grad_and_value
from core.recipes import lp_ft
from core.types import Episode, LossFn, Params


def lpft_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig) -> ClientResult:
    """One client's first-order direction after LP-FT's ``cfg.steps`` inner steps.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        meta: the meta-parameters ``{name: tensor}``.
        episode: ``support`` and ``query`` batches (or a ``query_fn`` the adapted policy collects the query with).
        cfg: ``steps`` at ``lr``; ``cfg.trainable`` names the head (set by the learner from ``Algorithm.inner_group``).

    Returns:
        ``(direction, metrics)``: the query gradient at the adapted weights (FO-MAML's), keyed like ``meta``;
        ``train/support_loss_before`` and ``train/query_loss``.
    """
    if not cfg.trainable:
        raise ValueError("fomaml-lpft probes the model's head first: the learner names it (inner group 'head')")
    adapted = lp_ft(loss_fn, meta, episode.support, cfg.steps, cfg.lr, cfg.trainable, first_order=True,
                    **cfg.adapt_kwargs())
    direction, query_loss = grad_and_value(loss_fn)(adapted, episode.query_for(adapted))
    return direction, {"train/support_loss_before": loss_fn(meta, episode.support), "train/query_loss": query_loss}


ALGORITHMS.register(
    "fomaml-lpft",
    Algorithm("fomaml-lpft", lpft_update, "FO-MAML with LP-FT as its inner loop (head first, then all)",
              inner_group="head", recipe="lp-ft"),
)
