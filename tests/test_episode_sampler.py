"""The class-episode sampler gathers indices in NumPy (a torch op's fixed cost was most of a round's episode
drawing); it must draw exactly what the plain torch formulation draws from the same generator."""
from __future__ import annotations

import pytest
import torch

from core.tasks import EpisodeSpec, Site, split_indices


def plain_class_split(site: Site, spec: EpisodeSpec, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    classes = range(spec.num_classes) if spec.num_classes is not None else torch.unique(site.y).tolist()
    sup, qry = [], []
    for c in classes:
        idx = torch.nonzero(site.y == c).flatten()
        perm = idx[torch.randperm(idx.numel(), generator=gen)]
        sup.append(perm[: spec.shots])
        rest = perm[spec.shots:]
        qry.append(rest[: spec.query] if spec.query is not None else rest)
    return torch.cat(sup), torch.cat(qry)


@pytest.mark.parametrize("spec", [EpisodeSpec(5, 15, "class", 5), EpisodeSpec(1, None, "class", None),
                                  EpisodeSpec(3, 2, "class", None), EpisodeSpec(0, 4, "class", 5)])
def test_class_episodes_equal_the_plain_torch_draw(spec: EpisodeSpec) -> None:
    data = torch.Generator().manual_seed(0)
    for i in range(6):
        y = torch.randint(0, 5, (200 + 17 * i,), generator=data)
        site = Site(f"s{i}", torch.randn(y.numel(), 3, generator=data), y)
        for r in range(4):
            fast = split_indices(site, spec, torch.Generator().manual_seed(100 * i + r))
            plain = plain_class_split(site, spec, torch.Generator().manual_seed(100 * i + r))
            for a, b in zip(fast, plain):
                assert a.dtype == b.dtype == torch.int64
                assert torch.equal(a, b)
