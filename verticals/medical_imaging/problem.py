"""Episodes and few-shot tasks of the imaging vertical.

- Episodes draw ``k`` labelled images per class. When a site has patient ids (``Site.groups``), the draw
  is patient-disjoint: support images come from a random set of patients, the query (meta-training)
  or scored images (evaluation, onboarding) only from the OTHER patients, so a patient never straddles
  support and query. Without patient ids it is the core's per-class draw.
- Optional MONAI augmentation of the support set (:mod:`verticals.medical_imaging.augment`).
- Scoring chooses the binary decision threshold on the (un-augmented) support set
  (:mod:`verticals.medical_imaging.metrics`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from core.choice import Criterion, Folds, pairwise_ranking, split_support, wrong_class_probability
from core.devices import device_of, to_device
from core.problem import FewShotTask, SupervisedProblem
from core.site_statistics import SiteStatistics
from core.tasks import EpisodeSpec, Site, SiteDataError, split_indices
from core.types import Batch, Episode, LossFn, Params
from verticals.medical_imaging.augment import augment_support, draw_seed
from verticals.medical_imaging.metrics import THRESHOLDS, imaging_metrics


def _shuffled(idx: Tensor, gen: torch.Generator) -> Tensor:
    return idx[torch.randperm(idx.numel(), generator=gen)]


def patient_split(site: Site, shots: int, query: Optional[int], num_classes: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Support (``shots`` per class) and query row indices with no patient in both.

    Patients are visited in random order; a patient is taken into the support when it has images of a
    class that still needs shots (up to the missing number of its images of that class are used; its
    other images are used nowhere in this episode). The query is ``query`` images per class (all, if
    ``None``) drawn from the remaining patients.
    """
    assert site.groups is not None
    y, groups = site.y, site.groups
    need = [shots] * num_classes
    support: list[Tensor] = []
    taken: list[int] = []
    for p in _shuffled(torch.unique(groups), gen).tolist():
        if not any(need):
            break
        rows = torch.nonzero(groups == p).flatten()
        useful = [c for c in range(num_classes) if need[c] and bool((y[rows] == c).any())]
        if not useful:
            continue
        taken.append(p)
        for c in useful:
            pick = _shuffled(rows[y[rows] == c], gen)[: need[c]]
            support.append(pick)
            need[c] -= pick.numel()
    short = [c for c in range(num_classes) if need[c]]
    if short:
        raise SiteDataError(f"site {site.site_id!r}: not enough images of class(es) {short} for {shots} shots per class")
    free = ~torch.isin(groups, torch.tensor(taken, dtype=groups.dtype))
    query_rows = []
    for c in range(num_classes):
        idx = _shuffled(torch.nonzero(free & (y == c)).flatten(), gen)
        want = 1 if query is None else query
        if idx.numel() < want:
            raise SiteDataError(
                f"site {site.site_id!r}: after taking {shots} shots per class from {len(taken)} patient(s), only "
                f"{idx.numel()} image(s) of class {c} from other patients remain (need {want}); lower the shots "
                "or add patients"
            )
        query_rows.append(idx if query is None else idx[:query])
    sup = torch.cat(support) if support else torch.zeros(0, dtype=torch.long)
    return sup, torch.cat(query_rows)


def split_episode(site: Site, shots: int, query: Optional[int], num_classes: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Patient-disjoint draw when the site has patient ids, else the core's per-class draw."""
    if site.groups is not None:
        return patient_split(site, shots, query, num_classes, gen)
    return split_indices(site, EpisodeSpec(shots=shots, query=query, by="class", num_classes=num_classes), gen)


@dataclass
class ImagingFewShotTask(FewShotTask):
    """One evaluation draw: adapt on ``support_batch``; score on ``heldout`` with a support-chosen threshold.

    Args:
        model: the architecture (parameters come from ``params``).
        site_id: the site.
        shots: images per class in the support.
        support_batch: what adaptation sees (possibly augmented).
        threshold_batch: the original support images (threshold choice).
        heldout: the scored images (other patients when patient ids exist).
        threshold: registered threshold rule (``support`` | ``fixed``).
    """

    model: nn.Module
    site_id: str
    shots: int
    support_batch: Batch
    threshold_batch: Batch
    heldout: Batch
    threshold: str = "support"
    eval_batch_size: int = 1024

    def support(self, params: Params) -> Batch:
        return self.support_batch

    def support_folds(self, max_folds: int) -> Optional[Folds]:
        # the original images: augmented copies of one image in two folds would leak
        return split_support(self.threshold_batch, None, self.threshold_batch[1], max_folds)

    def choice_criterion(self, loss_fn: LossFn) -> Criterion:
        if self._classes != 2:  # multi-class: the wrong classes' probability; binary (ranked by AUROC): the ranking
            return wrong_class_probability(self.logits)
        return pairwise_ranking(lambda params, x: (lambda z: z[:, 1] - z[:, 0])(self.logits(params, x)))

    def support_errors(self, params: Params) -> Optional[int]:
        if self._classes == 2:  # ranked by AUROC: the guard judges by the loss alone
            return None
        x, y = self.support_batch
        with torch.no_grad():
            return int((self.logits(params, x).argmax(-1) != y.reshape(-1)).sum())

    @cached_property
    def _classes(self) -> int:
        """The model's logit count, probed once per task on one image (the guard asks on every adapted cell)."""
        with torch.no_grad():
            return self.logits(dict(self.model.named_parameters()), self.threshold_batch[0][:1]).shape[1]

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """The model's logits on images ``x`` (``[n, classes]``), in chunks that move to the parameters' device and
        come back to ``x``'s (held-out images stay on the CPU)."""
        device = device_of(params)
        outs = [functional_call(self.model, params, (x[i:i + self.eval_batch_size].to(device),)).to(x.device)
                for i in range(0, x.shape[0], self.eval_batch_size)]
        return torch.cat(outs)

    @torch.no_grad()
    def score(self, params: Params) -> dict[str, float]:
        logits = self.logits(params, self.heldout[0])
        cut = None
        if logits.shape[1] == 2 and self.threshold_batch[0].shape[0] > 0:
            cut = THRESHOLDS.get(self.threshold)(self.logits(params, self.threshold_batch[0]), self.threshold_batch[1])
        return imaging_metrics(logits, self.heldout[1], cut)


@dataclass
class ImagingProblem(SupervisedProblem):
    """:class:`SupervisedProblem` with patient-disjoint episodes, support augmentation and thresholds.

    Args (beyond :class:`SupervisedProblem`):
        augment_copies: augmented copies per support image (0 = none).
        threshold: decision-threshold rule used when scoring.
    """

    augment_copies: int = 0
    threshold: str = "support"
    site_statistics: Optional[SiteStatistics] = SiteStatistics(feature_axis=1, scale=False, centre=False, orient=True)
    """A clinic's images oriented by the training clinics' mean image (an inverted export is reflected back
    about its mean), otherwise kept as they are: per-clinic standardization cost the seen-protocol clinics
    AUROC (verticals/recipes.md): :class:`core.site_statistics.SiteStatistics`."""

    def _augment(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.augment_copies <= 0:
            return x, y
        return augment_support(x, y, self.augment_copies, draw_seed(gen))

    def train_episode(self, site_id: str, meta: Params, gen: torch.Generator) -> Episode:
        site = self.federation.sites[site_id]
        sup, qry = split_episode(site, self.train_spec.shots, self.train_spec.query, int(self.num_classes), gen)
        xs, ys = self._augment(site.x[sup], site.y[sup], gen)
        return Episode(support=(xs, ys), query=(site.x[qry], site.y[qry]), site_id=site_id)

    def few_shot_task(self, model: nn.Module, site: Site, shots: int, gen: torch.Generator) -> FewShotTask:
        sup, rest = split_episode(site, shots, None, int(self.num_classes), gen)
        original = (site.x[sup], site.y[sup])
        device = device_of(model)  # support and threshold images on the model's device; scored ones stay here
        return ImagingFewShotTask(model, site.site_id, shots, to_device(self._augment(*original, gen), device),
                                  to_device(original, device), (site.x[rest], site.y[rest]), self.threshold)
