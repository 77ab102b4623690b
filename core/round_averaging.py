"""Average the meta-parameters of the last validated rounds instead of keeping the one the validation sites rank best.

Two validation sites rank rounds poorly (maintenance: the kept round moves by up to 150 rounds between equally
plausible validation signals, and the test RMSE by up to 2.2 with it). An equal-weight average of the iterates at the
last ``n`` validation rounds (stochastic weight averaging, Izmailov et al. UAI 2018, over federated rounds) does not
depend on that ranking. The states travel in Lightning's checkpoint, so a resumed run averages the same rounds.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import pytorch_lightning as pl

from core.aggregation import mean_params
from core.types import Params

#: The averaged model's file in a run's checkpoint folder, beside the best-validated ``round*.ckpt`` and ``last.ckpt``.
AVERAGED_CHECKPOINT = "averaged.ckpt"


class LastRoundsAverage(pl.Callback):
    """Keeps the meta-parameters at the end of each of the last ``n`` epochs (an epoch is ``fed.val_every`` rounds,
    ending with a validation); :meth:`average` is their mean."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"LastRoundsAverage needs n >= 1, got {n}")
        self.n = n
        self.states: deque[tuple[int, Params]] = deque(maxlen=n)

    @property
    def state_key(self) -> str:
        return f"LastRoundsAverage[n={self.n}]"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.keep(int(trainer.global_step), pl_module.meta_params())  # type: ignore[operator]

    def keep(self, step: int, params: Params) -> None:
        """Keep a copy of ``params`` at ``step`` (the oldest kept state goes once ``n`` are kept); the Flower
        ServerApp calls it directly (``core.federation.selection``)."""
        self.states.append((step, {k: v.detach().cpu().clone() for k, v in params.items()}))

    def average(self) -> Params:
        """The mean of the kept states."""
        if not self.states:
            raise RuntimeError("no round was kept to average: meta-training ran no full validation interval")
        return mean_params([state for _, state in self.states])

    @property
    def rounds(self) -> list[int]:
        """The rounds averaged (for the run's log)."""
        return [step for step, _ in self.states]

    def state_dict(self) -> dict[str, Any]:
        return {"states": list(self.states)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.states = deque(state_dict["states"], maxlen=self.n)
