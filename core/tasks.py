"""Sites, federations and the few-shot episode sampler.

A :class:`Federation` splits SITES (never rows) into train / validation / test roles, so a site's
rows never cross roles. The sampler draws k labelled examples per class (classification), k rows or
k groups such as engines (regression) as the support set; the query is a fixed number per class /
rows, or all the site's remaining rows.
"""
from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from core.types import Episode

ROLES = ("train", "validation", "test")
log = logging.getLogger(__name__)


class SiteDataError(ValueError):
    """A site cannot serve the requested episode (too few samples, unknown id, ...)."""


@dataclass
class Site:
    """One participant's private data.

    Args:
        site_id: unique id of the site (a hospital, a bank, a fleet ...).
        x: inputs, shape ``[n, ...]``.
        y: targets, shape ``[n]`` (class ids) or ``[n, ...]`` (regression).
        groups: optional group id per row, shape ``[n]`` (e.g. engine unit); regression
            episodes by group draw whole groups so a unit never straddles support and query.
        metadata: free-form facts about the site (e.g. its simulated scanner profile).
        unlabeled: inputs of the site without a label, ``[m, ...]`` (read only by site statistics,
            :mod:`core.site_statistics`; an onboarding site's unlabeled rows).
    """

    site_id: str
    x: Tensor
    y: Tensor
    groups: Optional[Tensor] = None
    metadata: dict[str, Any] = field(default_factory=dict)
    unlabeled: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise SiteDataError(f"site {self.site_id!r}: {self.x.shape[0]} inputs but {self.y.shape[0]} targets")
        if self.groups is not None and self.groups.shape[0] != self.x.shape[0]:
            raise SiteDataError(f"site {self.site_id!r}: groups has {self.groups.shape[0]} rows, x has {self.x.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows_of_class(self, c: int) -> np.ndarray:
        """Row indices whose target is ``c`` (cached: episodes are drawn every round; NumPy, because an
        episode gathers a few dozen indices per class, where a torch op's fixed cost is most of the work)."""
        cache = self.__dict__.setdefault("_rows_of_class", {})
        if c not in cache:
            cache[c] = torch.nonzero(self.y == c).flatten().cpu().numpy()
        return cache[c]


class RowCache:
    """The sites most recently used, built on demand: a round touches a few sites, so a federation of lazy
    sites holds memory for a round's sites, not for every site."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"a row cache needs capacity >= 1, got {capacity}")
        self.capacity = capacity
        self._rows: OrderedDict[str, Site] = OrderedDict()

    def get(self, site_id: str, build: Callable[[], Site]) -> Site:
        site = self._rows.pop(site_id, None)
        if site is None:
            site = build()
        self._rows[site_id] = site
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
        return site


class LazySite(Site):
    """A site as a cheap handle: its id, how to build it (``load``: e.g. an index into one array shared by the
    whole federation, or a generator seeded by the site id) and, when known without building, its size.
    ``x``/``y``/``groups``/``metadata`` come from the built site, built on first use and kept only while the
    shared ``cache`` holds it.

    ``identity`` is bytes that determine the rows (the dataset fingerprint hashes them instead of the rows);
    ``metadata`` given here is known without building (the built site's entries are added on top).
    """

    def __init__(self, site_id: str, load: Callable[[], Site], cache: RowCache, *, identity: bytes,
                 size: Optional[int] = None, metadata: Optional[dict[str, Any]] = None) -> None:
        self.site_id, self.size, self.load, self.cache, self.identity = site_id, size, load, cache, identity
        self.static_metadata = metadata if metadata is not None else {}
        self.unlabeled = None

    def _built(self) -> Site:
        site = self.cache.get(self.site_id, self.load)
        if self.size is None:
            self.size = len(site)
        elif len(site) != self.size:
            raise SiteDataError(f"site {self.site_id!r}: its handle says {self.size} rows, its data has {len(site)}")
        return site

    x = property(lambda self: self._built().x)
    y = property(lambda self: self._built().y)
    groups = property(lambda self: self._built().groups)
    metadata = property(lambda self: {**self.static_metadata, **self._built().metadata})

    def __len__(self) -> int:
        return self.size if self.size is not None else len(self._built())

    def rows_of_class(self, c: int) -> Tensor:
        return self._built().rows_of_class(c)  # cached on the built site, which the cache may drop

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"LazySite({self.site_id!r}, size={self.size})"


@dataclass
class Federation:
    """Sites and their roles. Build with :meth:`split` (seeded) or by naming roles."""

    sites: dict[str, Site]
    roles: dict[str, list[str]]

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for role, ids in self.roles.items():
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
            for sid in ids:
                if sid not in self.sites:
                    raise SiteDataError(f"role {role!r} names unknown site {sid!r}; known sites: {sorted(self.sites)}")
                if sid in seen:
                    raise SiteDataError(f"site {sid!r} is listed twice in role {role!r}" if seen[sid] == role
                                        else f"site {sid!r} is in both {seen[sid]!r} and {role!r}")
                seen[sid] = role
        for role in ROLES:
            self.roles.setdefault(role, [])

    @classmethod
    def split(cls, sites: Sequence[Site], *, validation: int, test: int, seed: int, test_ids: Sequence[str] = (),
              validation_ids: Sequence[str] = (), eligible: Optional[Eligibility] = None) -> "Federation":
        """Assign whole sites to roles (:func:`assign_roles`): named ids first, the rest drawn with ``seed``
        among the ``eligible`` ones; a site the rule turns down gets no role and is left out."""
        roles, excluded = assign_roles([s.site_id for s in sites], validation=validation, test=test, seed=seed,
                                       test_ids=test_ids, validation_ids=validation_ids, eligible=eligible)
        return cls(sites={s.site_id: s for s in sites if s.site_id not in excluded}, roles=roles)

    def role(self, name: str) -> list[Site]:
        return [self.sites[sid] for sid in self.roles[name]]

    def role_of(self, site_id: str) -> str:
        for role, ids in self.roles.items():
            if site_id in ids:
                return role
        raise SiteDataError(f"unknown site {site_id!r}; known sites: {sorted(self.sites)}")

    def describe(self) -> dict[str, Any]:
        return {role: {sid: len(self.sites[sid]) for sid in ids} for role, ids in self.roles.items()}


#: ``rule(site_id) -> None`` when the site may be drawn for training, else the reason it may not.
Eligibility = Callable[[str], Optional[str]]


def assign_roles(
    site_ids: Sequence[str],
    *,
    validation: int,
    test: int,
    seed: int,
    test_ids: Sequence[str] = (),
    validation_ids: Sequence[str] = (),
    eligible: Optional[Eligibility] = None,
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The one rule that gives sites their roles (every adapter calls it, directly or through
    :meth:`Federation.split`).

    Named test/validation ids come first; the other sites that ``eligible`` accepts (all when ``None``)
    are shuffled with ``seed`` (in id order before the shuffle) and fill the remaining ``test`` then
    ``validation`` places; the rest train.

    Returns:
        ``(roles, excluded)``: ``train/validation/test`` -> ids (train in drawn order), and
        ``{site_id: reason}`` for the sites the rule turned down (logged; they get no role).
    """
    repeated = sorted(sid for sid, n in Counter(site_ids).items() if n > 1)
    if repeated:
        raise SiteDataError(f"site id(s) {repeated} appear more than once; every site needs its own id "
                            "(rename or merge the repeated sites in the data)")
    for sid in (*test_ids, *validation_ids):
        if sid not in site_ids:
            raise SiteDataError(f"unknown site id {sid!r}; known sites: {sorted(site_ids)}")
    fixed = set(test_ids) | set(validation_ids)
    reasons = {sid: eligible(sid) for sid in sorted(site_ids) if sid not in fixed} if eligible else {}
    excluded = {sid: why for sid, why in reasons.items() if why is not None}
    for sid, why in excluded.items():
        log.warning("site %r gets no role: %s", sid, why)
    rest = [sid for sid in sorted(site_ids) if sid not in fixed and sid not in excluded]
    gen = torch.Generator().manual_seed(seed)
    order = [rest[i] for i in torch.randperm(len(rest), generator=gen).tolist()]
    n_test = max(test - len(test_ids), 0)
    n_val = max(validation - len(validation_ids), 0)
    if n_test + n_val >= len(order):
        raise SiteDataError(
            f"no site is left for training: {len(site_ids)} sites cannot give {test} test and {validation} validation "
            "sites and still leave training sites"
            + (f"; not eligible for training: {'; '.join(f'{s}: {w}' for s, w in excluded.items())}" if excluded else "")
        )
    roles = {"train": order[n_test + n_val:], "validation": list(validation_ids) + order[n_test:n_test + n_val],
             "test": list(test_ids) + order[:n_test]}
    return roles, excluded


@dataclass(frozen=True)
class EpisodeSpec:
    """How to draw an episode from a site.

    Args:
        shots: support size: examples per class (``by="class"``), rows (``"row"``) or groups (``"group"``).
        query: query size in the same unit; ``None`` takes all the site's remaining rows.
        by: ``"class"`` for classification, ``"row"`` or ``"group"`` for regression.
        num_classes: classes of the task (``by="class"``); each must have ``shots`` (+ ``query``) rows.
    """

    shots: int
    query: Optional[int] = None
    by: Literal["class", "row", "group"] = "class"
    num_classes: Optional[int] = None


def _take(gen: torch.Generator, idx: Tensor, n: int) -> tuple[Tensor, Tensor]:
    perm = idx[torch.randperm(idx.numel(), generator=gen)]
    return perm[:n], perm[n:]


def split_indices(site: Site, spec: EpisodeSpec, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Row indices of the support and query sets of one episode of ``site``."""
    if spec.shots < 0:
        raise ValueError(f"shots must be >= 0, got {spec.shots}")
    n = len(site)
    if spec.by == "class":
        classes = range(spec.num_classes) if spec.num_classes is not None else torch.unique(site.y).tolist()
        sup, qry = [], []
        need = spec.shots + (spec.query or 0)
        for c in classes:
            idx = site.rows_of_class(c)
            if len(idx) < need + (1 if spec.query is None else 0):
                raise SiteDataError(
                    f"site {site.site_id!r} has {len(idx)} samples of class {c}, but the episode needs "
                    f"{spec.shots} shots" + (f" + {spec.query} query" if spec.query else " + at least 1 to score")
                    + "; lower the shots or move this site out of the role"
                )
            perm = idx[torch.randperm(len(idx), generator=gen).numpy()]
            sup.append(perm[: spec.shots])
            qry.append(perm[spec.shots: need] if spec.query is not None else perm[spec.shots:])
        return torch.from_numpy(np.concatenate(sup)), torch.from_numpy(np.concatenate(qry))
    if spec.by == "row":
        need = spec.shots + (spec.query or 1)
        if n < need:
            raise SiteDataError(f"site {site.site_id!r} has {n} rows; the episode needs {need}")
        s, rest = _take(gen, torch.arange(n), spec.shots)
        return s, rest[: spec.query] if spec.query is not None else rest
    if spec.by == "group":
        if site.groups is None:
            raise SiteDataError(f"site {site.site_id!r} has no groups; use by='row' or give the site groups")
        units = torch.unique(site.groups)
        need = spec.shots + (spec.query or 1)
        if units.numel() < need:
            raise SiteDataError(f"site {site.site_id!r} has {units.numel()} groups; the episode needs {need}")
        s_units, rest_units = _take(gen, units, spec.shots)
        q_units = rest_units[: spec.query] if spec.query is not None else rest_units
        sup = torch.nonzero(torch.isin(site.groups, s_units)).flatten()
        qry = torch.nonzero(torch.isin(site.groups, q_units)).flatten()
        return sup, qry
    raise ValueError(f"unknown episode kind {spec.by!r}; choose class, row or group")


def sample_episode(site: Site, spec: EpisodeSpec, gen: torch.Generator) -> Episode:
    """Draw one support/query episode from ``site`` with the generator ``gen``."""
    sup, qry = split_indices(site, spec, gen)
    x, y = site.x, site.y
    return Episode(support=(x.index_select(0, sup), y.index_select(0, sup)),
                   query=(x.index_select(0, qry), y.index_select(0, qry)), site_id=site.site_id)


def stack_episodes(episodes: Sequence[Episode]) -> Optional[Episode]:
    """Stack episodes along a new leading client axis, or ``None`` if their shapes differ."""
    if not episodes or any(e.query_fn is not None for e in episodes):
        return None
    first = episodes[0]
    for e in episodes[1:]:
        for a, b in zip((*first.support, *first.query), (*e.support, *e.query)):
            if a.shape != b.shape or a.dtype != b.dtype:
                return None
    support = tuple(torch.stack([e.support[i] for e in episodes]) for i in range(len(first.support)))
    query = tuple(torch.stack([e.query[i] for e in episodes]) for i in range(len(first.query)))
    return Episode(support=support, query=query, site_id="stacked")


def site_slug(site_id: str) -> str:
    """``site_id`` as it may appear in names (registered models, run names, folders): runs of characters
    other than letters, digits, ``.``, ``_`` and ``-`` become one ``-`` (``clinic/7`` -> ``clinic-7``)."""
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(site_id)).strip("-.")
    if not slug:
        raise SiteDataError(f"site id {site_id!r} has no letter or digit; give the site a name (--site NAME)")
    return slug
