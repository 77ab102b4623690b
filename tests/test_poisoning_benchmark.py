"""benchmarks/poisoning.py on a vertical: the workload trains under the attack it is given and scores the same
held-out draws for every rule; a diverged model is counted, not averaged away."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from poisoning import summarize  # noqa: E402
from poisoning_workloads import vertical_workload  # noqa: E402


def test_nonfinite_scores_are_counted_and_pairs_skip_them():
    cell, row = summarize([1.0, 2.0, float("nan"), 3.0], [0.5, 1.0, 1.0, float("inf")])
    assert row["nonfinite"] == 1 and row["n"] == 4 and row["mean"] == pytest.approx(2.0)
    assert row["minus_mean"]["pairs"] == 2 and row["minus_mean"]["mean"] == pytest.approx(0.75)
    assert "(1/4 NaN)" in cell
    cell, row = summarize([float("nan")] * 3, None)
    assert cell == "diverged (3/3 NaN)" and row["mean"] is None
    assert "e+28" in summarize([5e28, 1.0, 3.0], None)[0]  # a blown-up model stays readable


def test_a_vertical_workload_scores_the_same_draws_under_each_attack():
    work = vertical_workload(0, vertical="sine", preset="quick", overrides=["data.train_sites=8", "data.test_sites=3"],
                             rounds=3, clients=4, shots=5, steps=2, draws=2, algorithm="fomaml")
    assert work.headline == "mse" and not work.higher_is_better and len(work.train_sites) == 8
    clean, again = work.score({}), work.score({})
    attacked = work.score({"attack": "sign_flip", "attack_fraction": 0.5, "attack_scale": 10.0})
    assert len(clean) == len(attacked) == 3 * 2 and all(math.isfinite(v) for v in clean)
    assert clean == again  # seeded: the rules compare on the same draws
    assert attacked != clean
