"""The shared data-sourcing layer (:mod:`data_adapters.sources`) and the one role rule
(:func:`core.tasks.assign_roles` / :meth:`Federation.split` with an eligibility rule)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from core.tasks import Federation, Site, SiteDataError, assign_roles
from data_adapters.sources import REPO_ROOT, GeneratedDataWarning, combine_moments, data_dir, locate, moments, \
    warn_generated


def test_locate_prefers_the_adapter_variable_then_the_data_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FML_DATA_DIR", raising=False)
    monkeypatch.delenv("FML_X_FILE", raising=False)
    assert data_dir() == REPO_ROOT.parent / "shared" / "data"
    monkeypatch.setenv("FML_DATA_DIR", str(tmp_path))
    assert locate(Path("x") / "x.csv", "FML_X_FILE") == tmp_path / "x" / "x.csv"
    monkeypatch.setenv("FML_X_FILE", str(tmp_path / "elsewhere.csv"))
    assert locate(Path("x") / "x.csv", "FML_X_FILE") == tmp_path / "elsewhere.csv"


def test_generated_fallback_is_one_labelled_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_generated("toy data", "/nowhere/toy.csv", "generated toys", "Set FML_TOY.")
    assert len(caught) == 1 and issubclass(caught[0].category, GeneratedDataWarning)
    text = str(caught[0].message)
    assert text.startswith("GENERATED DATA (toy data): no data at /nowhere/toy.csv; using generated toys, NOT real")
    assert text.endswith("Set FML_TOY.")


def test_federated_moments_equal_the_pooled_rows() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3)) for n in (5, 9, 4)]
    pooled = combine_moments([moments(p) for p in parts])
    rows = np.concatenate(parts)
    assert pooled["count"] == 18
    np.testing.assert_allclose(pooled["sum"], rows.sum(0))
    np.testing.assert_allclose(pooled["sumsq"], (rows ** 2).sum(0))
    groups = [rng.integers(0, 2, len(p)) for p in parts]
    by_group = combine_moments([moments(p, g, 2) for p, g in zip(parts, groups)])
    allg = np.concatenate(groups)
    np.testing.assert_allclose(by_group["sum"][1], rows[allg == 1].sum(0))
    assert by_group["count"].tolist() == [float((allg == 0).sum()), float((allg == 1).sum())]
    with pytest.raises(ValueError, match="no training sites"):
        combine_moments([])


def _sites(ids):
    return [Site(s, torch.zeros(2, 1), torch.zeros(2)) for s in ids]


def test_eligibility_rule_leaves_sites_out_and_draws_the_rest_as_without_them() -> None:
    ids = [f"s{i}" for i in range(8)]
    small = {"s2", "s5"}

    def rule(sid: str):
        return "too small" if sid in small else None

    roles, excluded = assign_roles(ids, validation=1, test=2, seed=3, test_ids=["s5"], eligible=rule)
    assert excluded == {"s2": "too small"}  # a named site is never judged by the training rule
    plain, none = assign_roles([s for s in ids if s != "s2"], validation=1, test=2, seed=3, test_ids=["s5"])
    assert roles == plain and none == {}
    fed = Federation.split(_sites(ids), validation=1, test=2, seed=3, test_ids=["s5"], eligible=rule)
    assert fed.roles == roles and "s2" not in fed.sites and len(fed.sites) == 7
    with pytest.raises(SiteDataError, match=r"no site is left for training.*not eligible for training: s2: too small"):
        assign_roles(ids[:4], validation=1, test=2, seed=0, eligible=rule)
