"""The maintenance :class:`~core.problem.Problem`: episodes of k units (engines), scored per unit.

Training episodes draw ``train_units`` support and ``query_units`` query units of a site and a FIXED
number of windows per unit (``windows_per_unit``, uniformly with replacement), so every client of a
round has the same shapes and the round runs in one ``vmap`` call. Evaluation (the held-out
protocol and onboarding) uses ``shots`` whole units of a site as support and scores every other unit
of the site: its evaluation window (``site.metadata['cut_rows']``; the last window by default) for
the headline ``rmse_last``, and all its windows for ``rmse_all``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from core.choice import Folds, split_support, time_blocks
from core.devices import device_of, to_device
from core.problem import FewShotTask, Problem, predict_batched
from core.site_statistics import SiteStatistics
from core.tasks import EpisodeSpec, Federation, LazySite, Site, SiteDataError
from core.types import Batch, Episode, LossFn, Params
from verticals.maintenance.metrics import rul_metrics
from verticals.maintenance.model import build_model


def unit_rows(site: Site) -> list[Tensor]:
    """Row indices of each unit (group) of ``site``, in group order."""
    if site.groups is None:
        raise SiteDataError(f"site {site.site_id!r} has no unit ids (groups); maintenance sites need them")
    return [torch.nonzero(site.groups == g).flatten() for g in torch.unique(site.groups)]


def eval_mask(site: Site) -> Tensor:
    """Boolean ``[n]``: the evaluation window of every unit (``metadata['cut_rows']``, else each unit's last row)."""
    mask = torch.zeros(len(site), dtype=torch.bool)
    cut = site.metadata.get("cut_rows")
    if cut is None:
        cut = [int(rows[-1]) for rows in unit_rows(site)]
    mask[torch.as_tensor(cut, dtype=torch.long)] = True
    return mask


def spaced(rows: Tensor, n: int) -> Tensor:
    """At most ``n`` rows of ``rows`` evenly spaced, always including the last (0 = all)."""
    if n <= 0 or rows.numel() <= n:
        return rows
    pick = torch.linspace(0, rows.numel() - 1, n).round().long()
    return rows[pick]


@dataclass
class UnitFewShotTask(FewShotTask):
    """Support = all (or ``support_windows`` evenly spaced) windows of ``shots`` units; score on the other units."""

    model: nn.Module
    site_id: str
    shots: int
    support_batch: Batch
    x_eval: Tensor
    y_eval: Tensor
    last_eval: Tensor
    support_units: Optional[Tensor] = None
    """``[n_support]`` unit of each support window, in time order: cross-validation folds hold out whole units,
    or contiguous blocks of a unit's life when there are too few units (:func:`core.choice.time_blocks`)."""
    eval_batch_size: int = 4096

    def support(self, params: Params) -> Batch:
        return self.support_batch

    def support_folds(self, max_folds: int) -> Optional[Folds]:
        parts = time_blocks(self.support_units) if self.support_units is not None else None
        return split_support(self.support_batch, parts, None, max_folds)

    def score(self, params: Params) -> dict[str, float]:
        return rul_metrics(predict_batched(self.model, params, self.x_eval, self.eval_batch_size), self.y_eval,
                           self.last_eval)


@dataclass
class MaintenanceProblem(Problem):
    """RUL regression over sensor windows, episodes by unit.

    Args:
        federation: sites from :func:`data_adapters.cmapss.build_cmapss_federation`.
        preprocessing: the saved preprocessing, including ``model`` (the model spec) and ``rul_cap``.
        train_units: support units per training episode.
        query_units: query units per training episode.
        windows_per_unit: windows drawn per unit in a training episode (fixed shapes -> vmap).
        support_windows: windows per support unit at evaluation, evenly spaced (0 = all).
    """

    federation: Federation
    preprocessing: dict[str, Any]
    train_units: int = 2
    query_units: int = 2
    windows_per_unit: int = 32
    support_windows: int = 0
    headline: str = "rmse_last"
    higher_is_better: bool = False
    checkpoint_metrics: tuple[str, ...] = ("rmse_all", "mae_last")
    site_statistics: Optional[SiteStatistics] = SiteStatistics(feature_axis=-1, scale=False, first_rows=20)
    """Sensors are the last axis of a window ``[n, window, sensors]``; each operator's sensors are centred on its
    engines' first 20 windows (their healthy start), not divided by their spread (which grows with wear)."""
    _units: dict[str, list[Tensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        need = self.train_units + self.query_units
        for sid in self.federation.roles["train"]:
            n = len(self.units_of(sid))
            if n < need:
                raise SiteDataError(
                    f"training site {sid!r} has {n} units; a training episode needs {self.train_units} support + "
                    f"{self.query_units} query units: lower data.train_units/query_units or raise units_per_site"
                )
            if isinstance(self.federation.sites[sid], LazySite):
                break  # generated operators all have units_per_site units: one check covers them

    @property
    def train_spec(self) -> EpisodeSpec:
        return EpisodeSpec(shots=self.train_units, query=self.query_units, by="group")

    def units_of(self, site_id: str) -> list[Tensor]:
        site = self.federation.sites[site_id]
        if isinstance(site, LazySite):  # rebuilt on demand: keeping its units would be O(sites) memory
            return unit_rows(site)
        if site_id not in self._units:
            self._units[site_id] = unit_rows(self.federation.sites[site_id])
        return self._units[site_id]

    def make_model(self) -> nn.Module:
        return build_model(self.preprocessing["model"])

    def loss_fn(self, model: nn.Module) -> LossFn:
        scale = float(self.preprocessing["rul_cap"])

        def loss(params: Params, batch: Batch) -> Tensor:
            pred = functional_call(model, params, (batch[0],))
            return torch.mean(((pred - batch[1]) / scale) ** 2)

        return loss

    def _draw(self, site: Site, units: list[Tensor], gen: torch.Generator) -> Batch:
        rows = torch.cat([u[torch.randint(u.numel(), (self.windows_per_unit,), generator=gen)] for u in units])
        return site.x[rows], site.y[rows]

    def train_episode(self, site_id: str, meta: Params, gen: torch.Generator) -> Episode:
        site, units = self.federation.sites[site_id], self.units_of(site_id)
        order = torch.randperm(len(units), generator=gen).tolist()
        sup = [units[i] for i in order[: self.train_units]]
        qry = [units[i] for i in order[self.train_units: self.train_units + self.query_units]]
        return Episode(support=self._draw(site, sup, gen), query=self._draw(site, qry, gen), site_id=site_id)

    def few_shot_task(self, model: nn.Module, site: Site, shots: int, gen: torch.Generator) -> FewShotTask:
        units = unit_rows(site) if site.site_id not in self.federation.sites else self.units_of(site.site_id)
        if shots < 0 or len(units) <= shots:
            raise SiteDataError(
                f"site {site.site_id!r} has {len(units)} units; {shots} support units leave none to score: "
                "lower the shots or give the site more units"
            )
        order = torch.randperm(len(units), generator=gen).tolist()
        picked = [spaced(units[i], self.support_windows) for i in order[:shots]]
        sup = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)
        sup_units = torch.cat([torch.full((len(p),), j) for j, p in enumerate(picked)]) if picked else sup
        rest = torch.cat([units[i] for i in order[shots:]])
        mask = eval_mask(site)
        support = to_device((site.x[sup], site.y[sup]), device_of(model))  # adapted on the model's device
        return UnitFewShotTask(model, site.site_id, shots, support,
                               site.x[rest], site.y[rest], mask[rest], sup_units)

    def input_example(self) -> Tensor:
        site = next(iter(self.federation.sites.values()))
        return site.x[:2]
