"""The fast signed-rank p-value (core.signed_rank) is SciPy's, bit for bit, with and without tied magnitudes."""
import json

import numpy as np
import pytest
from scipy.stats import wilcoxon

from core.choice import gain_pvalue
from core.signed_rank import EXACT_WITH_TIES_MAX, signed_rank_greater
from tests.conftest import REPO_ROOT


def _samples(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(2, EXACT_WITH_TIES_MAX + 4))
        values = rng.normal(0.3, 1.0, size=n)
        step = rng.choice([0.0, 0.1, 0.5, 1.0])
        if step:  # rounded: tied magnitudes, also across signs (-0.5 and 0.5)
            values = np.round(values / step) * step
        if rng.random() < 0.3:  # each loss twice, as a fold of one pair scores its two units
            values = np.repeat(values[: max(1, n // 2)], 2)
        values = values[values != 0]
        if len(values):
            out.append(values)
    return out


def test_the_p_value_is_scipys_with_and_without_ties():
    samples = _samples(0, 150)
    tied = [s for s in samples if len(np.unique(np.abs(s))) < len(s) and len(s) <= EXACT_WITH_TIES_MAX]
    assert len(tied) > 40  # the fast path is what is compared
    for values in samples:
        assert signed_rank_greater(values) == float(wilcoxon(values, alternative="greater").pvalue), values


def test_a_tie_across_signs_counts_and_the_duplicated_fold_losses_give_scipys_value():
    values = [0.3, 0.3, -0.1, 0.1, 0.2, 0.2, 0.5, 0.5]
    assert signed_rank_greater(values) == pytest.approx(float(wilcoxon(values, alternative="greater").pvalue), abs=0)
    assert gain_pvalue(values) == signed_rank_greater(values)


def test_zeros_are_refused_since_wilcoxon_drops_them_first():
    with pytest.raises(ValueError, match="non-zero"):
        signed_rank_greater([0.0, 1.0, 2.0])
    assert gain_pvalue([0.0, 1.0, 2.0, 3.0]) == signed_rank_greater([1.0, 2.0, 3.0])


def test_the_committed_fraud_records_choices_are_reproduced() -> None:
    """Every rule's choice in the committed fraud choice-rule record (2,700 draws, p-values by SciPy when they
    were recorded, most with tied fold losses) comes out the same from the fast p-value, and R1 is still
    the `auto` row's choice on every draw."""
    from benchmarks.choice_rules import RANKED, apply_rules, read_text

    path = REPO_ROOT / "benchmarks" / "results" / "experiments" / "choice_rules_fraud_full.json.gz"
    records = json.loads(read_text(str(path)).strip().splitlines()[-1])["records"]
    assert len(records) > 1000
    for r in records:
        rules = apply_rules(r["cv"], r["default"], r["fold_sizes"], ranked="fraud" in RANKED)
        assert rules == {k: v for k, v in r["rules"].items() if k in rules}, r
        assert rules["R1"] == r["auto"]
