"""``MetaLearner``: a thin Lightning shell in which one training step is one federated round.

The server optimizer is the Lightning optimizer (manual optimization); validation adapts on
validation sites and logs ``val/<metric>`` for ``ModelCheckpoint``/``EarlyStopping``. Episodes of a
round depend only on (seed, round index), and the optimizer state lives in the checkpoint, so a
resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace

from typing import Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.aggregation import aggregate_round
from core.algorithms.base import InnerConfig, get_algorithm
from core.attacks import poison
from core.config import FederatedConfig, ServerConfig
from core.devices import DeviceLike, check_devices, lightning_accelerator, resolve_device, to_device
from core.initialization import initial_model
from core.problem import Problem
from core.replay import GraphReplay
from core.round_averaging import AVERAGED_CHECKPOINT, LastRoundsAverage
from core.rounds import RoundResult, client_updates
from core.sampling import NEEDS_STRATA, SiteSizes, sample_clients
from core.meta_dropout import meta_dropout_for
from core.seeds import round_generator
from core.site_descriptors import site_strata
from core.server import make_server_optimizer, set_direction_as_grad
from core.types import Params

ValidateFn = Callable[[nn.Module, Params], dict[str, float]]


def _key(name: str) -> str:
    return name.replace(".", "__")


def with_group(inner: InnerConfig, problem: Problem, model: nn.Module, group: Optional[str] = None) -> InnerConfig:
    """``inner`` with the names of its inner-loop parameter group resolved on ``model`` -- ``group`` when given
    (an algorithm's own, ``Algorithm.inner_group``), else ``inner.group`` -- and those of every group
    (``rate_groups``, for step sizes learned per group)."""
    if group:
        inner = replace(inner, group=group)
    groups = problem.param_groups(model)
    if inner.group != "all" and inner.group not in groups:
        raise ValueError(f"inner.group {inner.group!r}: choose all or one of the problem's groups {sorted(groups)}")
    trainable = inner.trainable or (tuple(groups[inner.group]) if inner.group != "all" else ())
    return replace(inner, trainable=trainable,
                   rate_groups=inner.rate_groups or tuple(tuple(names) for names in groups.values() if names))


class MetaLearner(pl.LightningModule):
    """Federated meta-training of ``problem``'s model with ``algorithm``.

    Args:
        problem: the loaded vertical.
        algorithm: registered algorithm name (``fedavg``, ``maml``, ``fomaml``, ``reptile``, ...).
        inner: inner-loop settings.
        fed: rounds, sampling, aggregation.
        server: server optimizer.
        seed: seeds the initialization and every round's sampling.
        validate: ``validate(model, meta) -> metrics`` on validation sites (keys without prefix).
        start: model parameters to start from instead of the seeded initialization (warm start).
    """

    def __init__(
        self,
        problem: Problem,
        algorithm: str,
        inner: InnerConfig,
        fed: FederatedConfig,
        server: ServerConfig,
        seed: int,
        validate: Optional[ValidateFn] = None,
        start: Optional[Params] = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.problem, self.fed, self.server, self.seed = problem, fed, server, seed
        self.algorithm = get_algorithm(algorithm)
        self.validate_fn = validate
        self.model = initial_model(problem, self.algorithm, seed, start)
        self.inner = with_group(inner, problem, self.model, self.algorithm.inner_group)
        self.loss_fn = problem.loss_fn(self.model)
        self.meta_dropout = meta_dropout_for(problem, self.model, self.algorithm, self.inner)
        self.train_loss_fn = self.meta_dropout.loss(self.loss_fn)
        """The loss of meta-training episodes (:meth:`core.meta_dropout.MetaDropout.loss`); ``loss_fn`` elsewhere."""
        self.replay = GraphReplay()
        """This learner's traced rounds (``fed.trace_after``): they go with it, as its loss function does."""
        base = {k: v.detach() for k, v in self.model.named_parameters()}
        self.extra = nn.ParameterDict({_key(k): nn.Parameter(v) for k, v in self.algorithm.init_extra(base, inner).items()})
        self.diverged_at: Optional[int] = None
        """The round whose update became NaN/inf (meta-training stopped there), or None."""
        self.kept_rounds: list[int] = []
        """The rounds whose meta-parameters the learner holds after :func:`fit_meta_learner`: the averaged rounds,
        the best-validated round, or the last round."""
        self.kept_by: str = "last"
        """How :attr:`kept_rounds` were chosen: ``average`` | ``validation`` | ``last``."""
        self._train_ids = problem.train_site_ids()
        self._sizes = SiteSizes(self._train_ids, problem.site_size)
        self._strata = (site_strata(problem, self._train_ids, fed.clients_per_round, seed)
                        if fed.sampler in NEEDS_STRATA else None)

    def named_meta_parameters(self) -> dict[str, nn.Parameter]:
        named = dict(self.model.named_parameters())
        named.update({k.replace("__", "."): p for k, p in self.extra.items()})
        return named

    def meta_params(self) -> Params:
        return {k: p.detach() for k, p in self.named_meta_parameters().items()}

    def load_meta_params(self, params: Params) -> None:
        """Copy ``params`` (names as :meth:`meta_params`) into the meta-parameters."""
        with torch.no_grad():
            for name, p in self.named_meta_parameters().items():
                p.copy_(params[name].to(p.device))

    def configure_optimizers(self):
        return make_server_optimizer(self.server.optimizer, self.named_meta_parameters().values(), self.server.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(range(self.fed.val_every), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)

    def client_round(self, round_index: int) -> tuple[list[str], RoundResult, Params]:
        """The tensor part of a round, on the learner's device, changing no state: sample clients, draw their
        episodes (moved to the device when drawn), compute their updates, aggregate. Returns the sampled ids,
        the clients' results and the aggregated direction; every tensor is checked to be on the device."""
        gen = round_generator(self.seed, round_index)
        ids = sample_clients(self._train_ids, self._sizes, self.fed.clients_per_round, gen,
                             self.fed.sampler, self.fed.dropout, self._strata)
        meta = self.meta_params()
        episodes = [to_device(self.meta_dropout.episode(self.problem, sid, meta, self.seed, round_index),
                              self.device) for sid in ids]
        result = client_updates(self.algorithm, self.train_loss_fn, meta, episodes, self.inner, self.fed.vectorize,
                                self.fed.trace_after, self.replay)
        directions = poison(result.directions, ids, self.seed, self.fed.attack, self.fed.attack_fraction,
                            self.fed.attack_scale)
        direction = aggregate_round(directions, result.num_examples, self.fed, self.seed, round_index, result.metrics)
        check_devices(self.device, meta=meta, episodes=episodes, directions=directions, metrics=result.metrics,
                      direction=direction)
        return ids, result, direction

    def run_round(self, round_index: int) -> dict[str, float]:
        """Sample clients, compute their updates, aggregate, and step the server optimizer."""
        ids, result, direction = self.client_round(round_index)
        opt = self.optimizers()
        opt.zero_grad()
        set_direction_as_grad(self.named_meta_parameters(), direction)
        opt.step()
        logs = {k: float(v.float().mean()) for k, v in result.metrics.items()}
        logs["fed/clients"] = float(len(ids))
        return logs

    def training_step(self, batch, batch_idx):
        before = {k: v.clone() for k, v in self.meta_params().items()}
        logs = self.run_round(self.global_step)
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=1)
        if any(not torch.isfinite(p).all() for p in self.named_meta_parameters().values()):
            # A diverged round ends meta-training with the last finite parameters (the best validation
            # checkpoint, when there is one, is restored after fit) instead of losing the whole run.
            self.load_meta_params(before)
            self.diverged_at = int(self.global_step)
            self.trainer.should_stop = True

    def validation_step(self, batch, batch_idx):
        if self.validate_fn is None:
            return
        with torch.enable_grad():
            metrics = self.validate_fn(self.model, self.meta_params())
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True, batch_size=1)


class RoundsProgressBar(pl.callbacks.RichProgressBar):
    """Lightning's rich bar, counting federated ROUNDS (a training step is a round; an "epoch" is only the
    rounds between two validations, and ``max_epochs=-1`` would read "Epoch 0/-2")."""

    def _get_train_description(self, current_epoch: int) -> str:
        per_epoch = max(int(self.trainer.num_training_batches), 1)
        first = current_epoch * per_epoch + 1
        last = min(first + per_epoch - 1, self.trainer.max_steps)
        return f"rounds {first}-{last} of {self.trainer.max_steps}"

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        # the bar's narrow metrics column shows short names: "val/average_precision" -> "average_precision"
        items = super().get_metrics(trainer, pl_module)
        return {k.split("/")[-1]: v for k, v in items.items() if k != "v_num"}


class RoundLines(pl.Callback):
    """Progress where no terminal shows the bar (a log file, CI, ``nohup``): rich draws nothing there, so a full
    preset would be silent for an hour. One line per validation (``round r/R`` and the validation metrics), or,
    without validation, one per tenth of the rounds."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if getattr(pl_module, "validate_fn", None) is None and (step % max(total // 10, 1) == 0 or step == total):
            print(f"round {step}/{total}", flush=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scores = {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
        print(f"round {trainer.global_step}/{trainer.max_steps}" + (f": {shown}" if shown else ""), flush=True)


def fit_meta_learner(
    learner: MetaLearner,
    *,
    logger=False,
    checkpoint_dir: Optional[str] = None,
    monitor: Optional[str] = None,
    mode: str = "max",
    resume_from: Optional[str] = None,
    progress: bool = True,
    extra_callbacks: Sequence[pl.Callback] = (),
    device: DeviceLike = "cpu",
    average_last: int = 0,
) -> pl.Trainer:
    """One ``Trainer.fit`` for the whole meta-training run on ``device`` (``auto`` | ``cpu`` | ``cuda``: the
    Trainer's accelerator); restores the best validation checkpoint, or with ``average_last`` = n > 0 the mean of
    the meta-parameters at the last n validation rounds (:mod:`core.round_averaging`). The learner is back on the
    CPU afterwards (Lightning's teardown), and checkpoints load on the CPU. With averaging and a ``checkpoint_dir``, the
    averaged model is also saved there as ``averaged.ckpt``."""
    accelerator, devices = lightning_accelerator(resolve_device(device))
    callbacks: list[pl.Callback] = list(extra_callbacks)
    averaging = LastRoundsAverage(average_last) if average_last > 0 else None
    if averaging is not None:
        callbacks.append(averaging)
    ckpt_cb = None
    if checkpoint_dir is not None:
        ckpt_cb = pl.callbacks.ModelCheckpoint(
            dirpath=checkpoint_dir, monitor=monitor, mode=mode, save_top_k=1 if monitor else -1,
            save_last=True, filename="round{step}",
        )
        callbacks.append(ckpt_cb)
    if monitor and learner.fed.early_stopping_patience > 0:
        callbacks.append(pl.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                    patience=learner.fed.early_stopping_patience))
    bar = progress and sys.stdout.isatty()
    if progress:
        callbacks.append(RoundsProgressBar(leave=True) if bar else RoundLines())
    trainer = pl.Trainer(
        max_steps=learner.fed.rounds,
        max_epochs=-1,
        accelerator=accelerator,
        devices=devices,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=ckpt_cb is not None,
        enable_progress_bar=bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1,
        limit_val_batches=1 if learner.validate_fn is not None else 0,
        log_every_n_steps=max(1, min(50, learner.fed.val_every)),
    )
    _fit(trainer, learner, resume_from)
    if averaging is not None:
        learner.load_meta_params(averaging.average())
        learner.kept_rounds, learner.kept_by = averaging.rounds, "average"
        if ckpt_cb is not None:  # the kept model beside the best-validated round, so the folder holds what is used
            trainer.save_checkpoint(os.path.join(checkpoint_dir, AVERAGED_CHECKPOINT), weights_only=True)
    elif ckpt_cb is not None and monitor and ckpt_cb.best_model_path:
        best = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=False)
        learner.load_state_dict(best["state_dict"])
        learner.kept_rounds, learner.kept_by = [int(best["global_step"])], "validation"
    else:
        learner.kept_rounds, learner.kept_by = [int(trainer.global_step)], "last"
    return trainer




def _fit(trainer: pl.Trainer, learner: MetaLearner, resume_from: Optional[str]) -> None:
    """``trainer.fit``, except that Ctrl-C stays a ``KeyboardInterrupt``: Lightning answers it with a graceful
    shutdown, ``sys.exit(1)`` and SIGINT ignored from then on; callers (the CLI: one line, exit 130; MLflow:
    the run is not FINISHED) need to see the interruption, and later Ctrl-Cs must work."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        trainer.fit(learner, ckpt_path=resume_from)
    except SystemExit as exit_:
        if trainer.interrupted:
            raise KeyboardInterrupt from exit_
        raise
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)
