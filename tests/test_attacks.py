"""Simulated poisoning (core/attacks.py): a fixed, seeded share of sites attacks; only their rows change;
a robust aggregation rule resists a sign-flip attack that ruins the mean."""
from __future__ import annotations

import pytest
import torch

from core.aggregation import aggregate
from core.attacks import is_attacker, poison
from core.config import RunConfig, check_run_config


def test_attackers_are_a_fixed_seeded_share():
    ids = [f"site-{i}" for i in range(2000)]
    share = sum(is_attacker(0, s, 0.3) for s in ids) / len(ids)
    assert 0.27 < share < 0.33
    assert [is_attacker(0, s, 0.3) for s in ids] == [is_attacker(0, s, 0.3) for s in ids]
    assert [is_attacker(0, s, 0.3) for s in ids] != [is_attacker(1, s, 0.3) for s in ids]
    assert not any(is_attacker(0, s, 0.0) for s in ids)


def test_only_the_attackers_rows_change_and_median_resists_a_sign_flip():
    ids = [f"site-{i}" for i in range(40)]
    bad = [i for i, s in enumerate(ids) if is_attacker(3, s, 0.3)]
    assert 0 < len(bad) < 20
    honest = {"w": torch.ones(40, 4) + 0.01 * torch.randn(40, 4)}
    flipped = poison(honest, ids, 3, "sign_flip", 0.3, 10.0)
    good = [i for i in range(40) if i not in bad]
    assert torch.equal(flipped["w"][good], honest["w"][good])
    assert torch.allclose(flipped["w"][bad], -10.0 * honest["w"][bad])
    weights = torch.full((40,), 1 / 40)
    assert aggregate(flipped, weights, "mean")["w"].mean() < 0  # the mean now points the wrong way
    assert torch.allclose(aggregate(flipped, weights, "median")["w"], torch.ones(4), atol=0.05)
    assert poison(honest, ids, 3, "none", 0.3, 10.0) is honest


def test_attack_options_are_checked_before_any_data():
    cfg = RunConfig(data=None)
    cfg.fed.attack = "bogus"
    with pytest.raises(ValueError, match="--fed.attack bogus"):
        check_run_config(cfg)
    cfg.fed.attack, cfg.fed.attack_fraction = "scale", 1.0
    with pytest.raises(ValueError, match="--fed.attack-fraction 1.0"):
        check_run_config(cfg)
