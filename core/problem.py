"""What a vertical hands the engine once its data is loaded: a :class:`Problem`.

The engine never reads dataset files; it asks the problem for a model, a loss, training episodes and
few-shot evaluation tasks. :class:`SupervisedProblem` serves every row-based vertical; a vertical whose
clients produce their own data (robotics) subclasses :class:`Problem`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from core.choice import Criterion, Folds, pairwise_ranking, split_support, unit_loss, wrong_class_probability
from core.devices import device_of, to_device
from core.context import context_names
from core.recipes import head_names
from core.site_statistics import SiteStatistics
from core.tasks import EpisodeSpec, Federation, Site, sample_episode, split_indices
from core.types import Batch, Episode, LossFn, Params

MetricFn = Callable[[Tensor, Tensor], dict[str, float]]


class FewShotTask(ABC):
    """One (site, shots, draw) of the evaluation protocol: the support each method adapts on and the
    held-out data it is scored on. Every method sees the same draw.

    Devices: the support is on the device of the model the task was drawn with (adaptation runs there);
    the scored rows stay where the site keeps them and move to the device in chunks (:func:`predict_batched`)."""

    site_id: str
    shots: int
    support_loss_falls: ClassVar[bool] = True
    """Whether adapting is meant to LOWER the support's loss, so that a rise means the step size diverged
    (onboarding then keeps the start): true of labelled rows; not of a policy-gradient surrogate on the start's
    own rollouts, where a step aims at the return and a clipped surrogate may rise after it."""

    @abstractmethod
    def support(self, params: Params) -> Batch:
        """The support batch (supervised: fixed rows; RL: rollouts of ``params``)."""

    @abstractmethod
    def score(self, params: Params) -> dict[str, float]:
        """Metrics of ``params`` on the held-out part of the site."""

    def support_folds(self, max_folds: int) -> Optional[Folds]:
        """Cross-validation folds of the labelled support set (for the per-site choice of a starting
        point, :mod:`core.choice`), or None when the task's support cannot be split (too few examples,
        or a support the policy produces itself, as in RL). Never touches the scored rows."""
        return None

    def episode_trials(self) -> Optional[Callable[[Params, int, int], list[float]]]:
        """For a task whose support the policy produces: ``trial_scores(params, episodes, trial)``, the headline of
        each of ``episodes`` fresh episodes of ``params`` run unadapted on the site with the ``trial``-th start's
        own seeds (never the scored episodes'), what a site that will not adapt spends its support budget on
        (:func:`core.choice.choose_by_trials`). None (the default) for a labelled support, whose folds already
        score every start unadapted."""
        return None

    def episode_support(self) -> Optional[Callable[[Params, int, int], Batch]]:
        """Beside :meth:`episode_trials`: ``trial_support(params, episodes, trial)``, ``episodes`` fresh rollouts of
        ``params`` as a support batch, with seeds of the ``trial``-th start apart from its trial episodes' -- what a
        start adapts on before it is tried adapted (:func:`core.choice.choose_by_adapted_trials`). None (the default)
        for a labelled support."""
        return None

    def choice_criterion(self, loss_fn: LossFn) -> Criterion:
        """How the per-site choice scores a held-out unit of the support (default: its training loss)."""
        return unit_loss(loss_fn)

    def support_errors(self, params: Params) -> Optional[int]:
        """How many support rows ``params`` answers wrongly, where the headline counts right answers (a classifier
        scored by accuracy), else None: the divergence guard's second signal (:func:`core.guard.divergence`)."""
        return None


class Problem(ABC):
    """A loaded vertical: federation, model factory, loss, episodes, metrics.

    Attributes:
        federation: the sites and their roles.
        headline: the metric that ranks models and picks adaptation settings.
        higher_is_better: direction of ``headline``.
        checkpoint_metrics: metrics besides ``headline``, in its direction, that may keep the best round of
            meta-training instead (``--eval.checkpoint-metric``).
        preprocessing: JSON-serializable state saved with the model (scalers, vocabularies ...).
        site_specific: names of parameters whose meaning differs per site (a classifier head over
            per-site label mappings); meta-learners start them at zero (``core.initialization``).
        site_statistics: where the model input's features are, for standardizing each site by its own
            unlabeled inputs (:mod:`core.site_statistics`); None when the vertical has no such inputs.
    """

    federation: Federation
    headline: str
    higher_is_better: bool = True
    checkpoint_metrics: tuple[str, ...] = ()
    preprocessing: dict[str, Any]
    site_specific: tuple[str, ...] = ()
    site_statistics: Optional[SiteStatistics] = None

    @abstractmethod
    def make_model(self) -> nn.Module:
        """A fresh model (seed with ``torch.manual_seed`` before calling)."""

    @abstractmethod
    def loss_fn(self, model: nn.Module) -> LossFn:
        """Pure loss ``(params, batch) -> scalar`` for ``model``."""

    @abstractmethod
    def train_episode(self, site_id: str, meta: Params, gen: torch.Generator) -> Episode:
        """A meta-training episode of site ``site_id``."""

    @abstractmethod
    def few_shot_task(self, model: nn.Module, site: Site, shots: int, gen: torch.Generator) -> FewShotTask:
        """A seeded evaluation draw on ``site`` with ``shots`` labelled examples (per class / units)."""

    @abstractmethod
    def input_example(self) -> Tensor:
        """A small batch of model inputs (for the MLflow signature)."""

    def param_groups(self, model: nn.Module) -> dict[str, tuple[str, ...]]:
        """Named groups of ``model``'s parameters that recipes adapt separately (:mod:`core.recipes`): ``head``
        (default: the last module that owns parameters), ``context`` (context vectors, :mod:`core.context`, when
        the model has any) and ``body`` (the rest)."""
        names = [n for n, _ in model.named_parameters()]
        head, context = head_names(model), context_names(names)
        groups = {"head": head, "body": tuple(n for n in names if n not in head and n not in context)}
        return {**groups, "context": context} if context else groups

    def site_size(self, site_id: str) -> int:
        return len(self.federation.sites[site_id])

    def site_descriptor(self, site_id: str) -> Tensor:
        """What the site reports for the diversity sampler (:mod:`core.site_descriptors`): input moments and
        label statistics. A problem without row inputs (RL) has none."""
        from core.site_descriptors import describe_site

        if self.site_statistics is None:
            raise ValueError(f"{type(self).__name__} has no site descriptors; use fed.sampler uniform or size")
        return describe_site(self.federation.sites[site_id], self.site_statistics,
                             getattr(self, "num_classes", None))

    def train_site_ids(self) -> list[str]:
        return list(self.federation.roles["train"])


def has_tied_weights(model: nn.Module) -> bool:
    """Whether one parameter is reachable under two names (``named_parameters`` lists it once)."""
    return len(list(model.named_parameters(remove_duplicate=False))) != len(list(model.named_parameters()))


def supervised_loss(model: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    # Untying costs about a quarter of a small model's functional_call; skip it when nothing is tied.
    tie_weights = has_tied_weights(model)

    def loss_fn(params: Params, batch: Batch) -> Tensor:
        return criterion(functional_call(model, params, (batch[0],), tie_weights=tie_weights), batch[1])

    return loss_fn


@torch.no_grad()
def predict_batched(model: nn.Module, params: Params, x: Tensor, batch_size: int = 4096) -> Tensor:
    """``model`` with ``params`` on ``x`` in chunks of ``batch_size`` rows (bounded memory for big sites): each
    chunk moves to the parameters' device, the outputs come back to ``x``'s device (where metrics run)."""
    device = device_of(params)
    return torch.cat([functional_call(model, params, (x[i : i + batch_size].to(device),)).to(x.device)
                      for i in range(0, x.shape[0], batch_size)])


@dataclass
class SupervisedFewShotTask(FewShotTask):
    model: nn.Module
    site_id: str
    shots: int
    support_batch: Batch
    heldout: Batch
    metrics: MetricFn
    eval_batch_size: int = 4096
    stratified: bool = True
    """Folds stratified by the support's class labels (classification); rows are the units."""
    ranked: bool = False
    """Binary task ranked by AUROC / PR-AUC: the choice compares candidates by a pairwise ranking loss."""

    def support(self, params: Params) -> Batch:
        return self.support_batch

    def support_folds(self, max_folds: int) -> Optional[Folds]:
        strata = self.support_batch[1] if self.stratified else None
        return split_support(self.support_batch, None, strata, max_folds)

    def choice_criterion(self, loss_fn: LossFn) -> Criterion:
        if self.ranked:
            return pairwise_ranking(lambda params, x: functional_call(self.model, params, (x,)).reshape(-1))
        if self._classifier():
            return wrong_class_probability(lambda params, x: functional_call(self.model, params, (x,)))
        return unit_loss(loss_fn)

    def support_errors(self, params: Params) -> Optional[int]:
        if not self._classifier():
            return None
        x, y = self.support_batch
        with torch.no_grad():
            return int((functional_call(self.model, params, (x,)).argmax(-1) != y.reshape(-1)).sum())

    def _classifier(self) -> bool:
        """A classifier scored by accuracy: class-stratified, not ranked, one logit per class."""
        if self.ranked or not self.stratified or self.support_batch[0].shape[0] == 0:
            return False
        return self._output_columns >= 2

    @cached_property
    def _output_columns(self) -> int:
        """Columns of the model's output (0 when it is not a matrix), probed once per task: the guard asks on
        every adapted cell. The whole support (on the model's device): one row would trip a batch norm."""
        with torch.no_grad():
            out = self.model(self.support_batch[0])
        return out.shape[1] if out.ndim == 2 else 0

    def score(self, params: Params) -> dict[str, float]:
        return self.metrics(predict_batched(self.model, params, self.heldout[0], self.eval_batch_size), self.heldout[1])


@dataclass
class SupervisedProblem(Problem):
    """A row-based vertical: classification (episodes by class) or regression (by row or group).

    Args:
        federation: sites with ``x``/``y`` tensors.
        model_factory: builds a fresh model.
        criterion: ``criterion(outputs, targets) -> scalar``.
        metrics: ``metrics(outputs, targets) -> {name: value}``, containing ``headline``.
        headline: metric ranking models.
        train_spec: the episode drawn from training sites each round.
        eval_by: episode unit at evaluation (``class`` | ``row`` | ``group``).
        num_classes: for classification.
        higher_is_better: direction of ``headline``.
        preprocessing: JSON-serializable state saved with the model.
        site_specific: parameters meta-learners start at zero (see :class:`Problem`).
        ranked: binary task ranked by AUROC / PR-AUC (the per-site choice compares rankings).
    """

    federation: Federation
    model_factory: Callable[[], nn.Module]
    criterion: Callable[[Tensor, Tensor], Tensor]
    metrics: MetricFn
    headline: str
    train_spec: EpisodeSpec
    eval_by: str = "class"
    num_classes: Optional[int] = None
    higher_is_better: bool = True
    preprocessing: dict[str, Any] = field(default_factory=dict)
    site_specific: tuple[str, ...] = ()
    ranked: bool = False
    """A binary task whose headline ranks (AUROC, PR-AUC): see :attr:`SupervisedFewShotTask.ranked`."""
    site_statistics: Optional[SiteStatistics] = SiteStatistics(feature_axis=1)
    """Features on axis 1 (rows ``[n, F]``, images ``[n, C, H, W]``): see :class:`Problem`."""

    def make_model(self) -> nn.Module:
        return self.model_factory()

    def loss_fn(self, model: nn.Module) -> LossFn:
        return supervised_loss(model, self.criterion)

    def train_episode(self, site_id: str, meta: Params, gen: torch.Generator) -> Episode:
        return sample_episode(self.federation.sites[site_id], self.train_spec, gen)

    def few_shot_task(self, model: nn.Module, site: Site, shots: int, gen: torch.Generator) -> FewShotTask:
        spec = EpisodeSpec(shots=shots, query=None, by=self.eval_by, num_classes=self.num_classes)  # type: ignore[arg-type]
        sup, rest = split_indices(site, spec, gen)
        support = to_device((site.x[sup], site.y[sup]), device_of(model))  # adapted on the model's device
        return SupervisedFewShotTask(model, site.site_id, shots, support,
                                     (site.x[rest], site.y[rest]), self.metrics, stratified=self.eval_by == "class",
                                     ranked=self.ranked)

    def input_example(self) -> Tensor:
        site = next(iter(self.federation.sites.values()))
        return site.x[:2]
