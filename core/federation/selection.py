"""Which meta-parameters a Flower run keeps, decided as ``fml run`` decides it.

At every round that ends a ``fed.val_every`` interval the ServerApp offers the meta-parameters to
:class:`KeptRounds`. It keeps, in ``fml run``'s order of precedence (``core.learner.fit_meta_learner``):

1. with ``eval.checkpoint_average = n``: the mean of the last n offered states (``fml run``'s ``LastRoundsAverage``);
2. with a :class:`RoundSelection` (the validation sites, read on the coordinator): the state the validation
   sites rank best, as Lightning's ``ModelCheckpoint`` ranks it (the first validated round, then any strictly
   better one: a tie keeps the earlier round, a non-finite score ranks last); ``fed.early_stopping_patience``
   validations without a gain, or a non-finite score, end training as ``EarlyStopping`` does;
3. otherwise the last round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from core.round_averaging import LastRoundsAverage
from core.types import Params


@dataclass(frozen=True)
class RoundSelection:
    """Few-shot validation of meta-parameters on the validation sites, and how to rank its result.

    Args:
        validate: ``validate(meta) -> metrics`` (keys without prefix, e.g. ``accuracy``).
        metric: the key that ranks rounds (``--eval.checkpoint-metric``, default the vertical's headline).
        higher_is_better: the metric's direction.
        patience: validations without a gain that end training (``fed.early_stopping_patience``; 0 = never).
    """

    validate: Callable[[Params], dict[str, float]]
    metric: str
    higher_is_better: bool
    patience: int = 0


def _clone(meta: Params) -> Params:
    return {k: v.detach().clone() for k, v in meta.items()}


class KeptRounds:
    """Folds the validated rounds of a run into what it keeps (see the module docstring)."""

    def __init__(self, average_last: int = 0, selection: Optional[RoundSelection] = None) -> None:
        self.selection = selection
        self._averaged = LastRoundsAverage(average_last) if average_last else None
        self.best: Optional[tuple[int, float, Params]] = None
        self.since_best = 0
        self.non_finite = False

    def offer(self, server_round: int, meta: Params) -> dict[str, float]:
        """The state at the end of a validation interval; returns the validation metrics (empty without a
        selection)."""
        if self._averaged is not None:
            self._averaged.keep(server_round, meta)
        if self.selection is None:
            return {}
        metrics = self.selection.validate(meta)
        if self.selection.metric not in metrics:
            raise KeyError(f"validation returned {sorted(metrics)}; the run ranks rounds by "
                           f"{self.selection.metric!r} (--eval.checkpoint-metric)")
        value = float(metrics[self.selection.metric])
        if not math.isfinite(value):  # as ModelCheckpoint: a non-finite score ranks last
            self.non_finite = True
            value = -math.inf if self.selection.higher_is_better else math.inf
        if self._improves(value):
            self.best, self.since_best = (server_round, value, _clone(meta)), 0
        else:
            self.since_best += 1
        return metrics

    def _improves(self, value: float) -> bool:
        if self.best is None:  # ModelCheckpoint keeps the first validated round whatever its score
            return True
        best = self.best[1]
        return value > best if self.selection.higher_is_better else value < best

    @property
    def should_stop(self) -> bool:
        """Early stopping: ``patience`` validations in a row without a gain, or a non-finite score."""
        if self.selection is None or self.selection.patience <= 0:
            return False
        return self.non_finite or self.since_best >= self.selection.patience

    def kept(self, last_round: int, last_meta: Params) -> tuple[Params, list[int], str]:
        """``(meta, rounds, by)``: the parameters kept, the rounds they come from and how they were chosen,
        ``average`` | ``validation`` | ``last`` (``MetaLearner.kept_by``'s words)."""
        if self._averaged is not None and self._averaged.states:
            return self._averaged.average(), self._averaged.rounds, "average"
        if self.best is not None:
            return self.best[2], [self.best[0]], "validation"
        return last_meta, [last_round], "last"
