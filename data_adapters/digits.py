"""Few-shot handwritten digits (the R1 reference workload of ``BENCHMARKS.md``).

Data: scikit-learn's bundled ``load_digits`` (1,797 8x8 images; ships with the package, so this
runs on a fresh clone with no data folder). A site is an N-way task: N of the 10 digit classes drawn
by the site's own seeded generator and relabelled 0..N-1 in the drawn order, so every site has its
own label mapping and no single global model can serve all sites without adaptation.

Images are split once into a meta-training pool and a held-out pool: training sites draw their rows
from the first, validation and test sites from the second (tasks of one role share images, as in
standard few-shot benchmarks; no image crosses roles).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial

import torch

from core.tasks import Federation, LazySite, RowCache, Site


@dataclass
class DigitsData:
    """Options of the digits federation."""

    ways: int = 5
    """Classes per site (N-way)."""
    train_sites: int = 100
    """Meta-training sites."""
    validation_sites: int = 20
    """Validation sites (adaptation-settings search, checkpoint selection)."""
    test_sites: int = 200
    """Held-out test sites (fresh tasks)."""
    heldout_fraction: float = 0.3
    """Fraction of images reserved for validation/test sites."""
    cached_sites: int = 256
    """Sites whose rows are kept built at once (sites are built on demand: memory is O(cached sites), not O(sites))."""


def load_digit_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # lazy: sklearn costs ~1 s of start-up per ClientApp process

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y, dtype=torch.long)


def _task_site(site_id: str, x: torch.Tensor, by_class: list[torch.Tensor], classes: list[int]) -> Site:
    """An N-way task over a pool: the pool's rows of each drawn class, relabelled in drawn order."""
    rows = torch.cat([by_class[c] for c in classes])
    y = torch.cat([torch.full((by_class[c].numel(),), label, dtype=torch.long) for label, c in enumerate(classes)])
    return Site(site_id, x[rows], y, metadata={"classes": classes})


def _drawn_classes(seed: int, ways: int) -> list[int]:
    return torch.randperm(10, generator=torch.Generator().manual_seed(seed))[:ways].tolist()


def make_task_site(site_id: str, x: torch.Tensor, y: torch.Tensor, ways: int, seed: int) -> Site:
    """An N-way site: classes drawn by the site's own generator, relabelled in drawn order."""
    return _task_site(site_id, x, [torch.nonzero(y == c).flatten() for c in range(10)], _drawn_classes(seed, ways))


def build_digits_federation(cfg: DigitsData, seed: int) -> Federation:
    """Training sites draw from the meta-training pool, validation and test sites from the held-out pool.

    Sites are :class:`~core.tasks.LazySite` handles over the two pools (a site keeps its drawn classes, not
    copies of its rows), so 100,000 sites take seconds and memory for a round's sites only."""
    x, y = load_digit_arrays()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    n_held = int(len(y) * cfg.heldout_fraction)
    held, train = perm[:n_held], perm[n_held:]
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes() + perm.numpy().tobytes()).digest()
    cache = RowCache(cfg.cached_sites)
    sites, roles = [], {"train": [], "validation": [], "test": []}
    counts = {"train": cfg.train_sites, "validation": cfg.validation_sites, "test": cfg.test_sites}
    for r_i, (role, pool) in enumerate([("train", train), ("validation", held), ("test", held)]):
        px, py = x[pool], y[pool]
        by_class = [torch.nonzero(py == c).flatten() for c in range(10)]
        for i in range(counts[role]):
            sid = f"{role}-{i:03d}"
            classes = _drawn_classes(seed * 100_003 + r_i * 10_007 + i, cfg.ways)
            size = sum(by_class[c].numel() for c in classes)
            sites.append(LazySite(sid, partial(_task_site, sid, px, by_class, classes), cache, size=size,
                                  identity=digest + f"{role}/{classes}".encode(), metadata={"classes": classes}))
            roles[role].append(sid)
    return Federation({s.site_id: s for s in sites}, roles)
