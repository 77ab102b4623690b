"""Meta-learning through a closed-form head: R2-D2 (Bertinetto et al. ICLR 2019, ridge) and its logistic
twin LR-D2, in the spirit of MetaOptNet (Lee et al. CVPR 2019).

The inner loop fits ONLY the head on the support set, in closed form (:func:`core.recipes.newton_head`:
``inner.steps`` Newton steps on the loss plus ``inner.lr / 2 * ||head - meta head||^2``, exact ridge after one
step for a squared loss), and the direction is the gradient of the query loss THROUGH that solve, so the body
learns features a few labelled rows can fit a head on without a step size or a step count to get wrong.
``inner.lr`` is the L2 penalty here, as it is the ``newton-head`` recipe's rate; evaluation and onboarding
adapt with that recipe.
"""
from __future__ import annotations

from core.algorithms.base import ALGORITHMS, Algorithm, ClientResult, InnerConfig
from core.autodiff import grad
from core.recipes import newton_head
from core.types import Episode, LossFn, Params


def r2d2_update(loss_fn: LossFn, meta: Params, episode: Episode, cfg: InnerConfig) -> ClientResult:
    """One client's direction: the gradient of the query loss after the closed-form head fit.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (squared loss: ridge; log loss: L2-logistic).
        meta: the meta-parameters ``{name: tensor}``.
        episode: ``support`` and ``query`` batches, e.g. ``(x [n, ...], y [n])`` each.
        cfg: ``steps`` Newton steps, ``lr`` the penalty toward the meta-learned head; ``cfg.trainable`` names
            the head (set by the learner from ``Algorithm.inner_group``).

    Returns:
        ``(direction, metrics)``: ``direction`` keyed and shaped like ``meta`` (body and head);
        ``train/support_loss_before`` and ``train/query_loss``.
    """
    if not cfg.trainable:
        raise ValueError("r2d2 fits the model's head in closed form: the learner names it (inner group 'head')")

    def meta_loss(p: Params):
        loss = loss_fn(newton_head(loss_fn, p, episode.support, cfg.trainable, cfg.lr, cfg.steps), episode.query)
        return loss, loss

    direction, query_loss = grad(meta_loss, has_aux=True)(meta)
    return direction, {"train/support_loss_before": loss_fn(meta, episode.support), "train/query_loss": query_loss}


ALGORITHMS.register(
    "r2d2",
    Algorithm("r2d2", r2d2_update, "R2-D2 / LR-D2: the head fitted in closed form (Newton) on the support, the body "
              "meta-trained through the solve", supports_rollouts=False, inner_group="head", recipe="newton-head"),
)
