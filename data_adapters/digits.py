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

from dataclasses import dataclass

import torch

from core.tasks import Federation, Site


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


def load_digit_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # lazy: sklearn costs ~1 s of start-up per ClientApp process

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y, dtype=torch.long)


def make_task_site(site_id: str, x: torch.Tensor, y: torch.Tensor, ways: int, seed: int) -> Site:
    """An N-way site: classes drawn by the site's own generator, relabelled in drawn order."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randperm(10, generator=gen)[:ways]
    xs, ys = [], []
    for new_label, c in enumerate(classes.tolist()):
        rows = y == c
        xs.append(x[rows])
        ys.append(torch.full((int(rows.sum()),), new_label, dtype=torch.long))
    return Site(site_id, torch.cat(xs), torch.cat(ys), metadata={"classes": classes.tolist()})


def build_digits_federation(cfg: DigitsData, seed: int) -> Federation:
    x, y = load_digit_arrays()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    n_held = int(len(y) * cfg.heldout_fraction)
    held, train = perm[:n_held], perm[n_held:]
    sites, roles = [], {"train": [], "validation": [], "test": []}
    counts = {"train": cfg.train_sites, "validation": cfg.validation_sites, "test": cfg.test_sites}
    for r_i, (role, pool) in enumerate([("train", train), ("validation", held), ("test", held)]):
        for i in range(counts[role]):
            sid = f"{role}-{i:03d}"
            site_seed = seed * 100_003 + r_i * 10_007 + i
            sites.append(make_task_site(sid, x[pool], y[pool], cfg.ways, site_seed))
            roles[role].append(sid)
    return Federation({s.site_id: s for s in sites}, roles)
