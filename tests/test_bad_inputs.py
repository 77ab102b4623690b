"""Bad inputs that had no test (issue 17): each fails with one line naming the site or file and the fix."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.algorithms import InnerConfig
from core.config import FederatedConfig, ServerConfig
from core.federation.node import LoadedSite, NodeConfigError, NodeData
from core.initialization import mismatch
from core.learner import MetaLearner
from core.tasks import Federation, Site, SiteDataError


def site(site_id: str) -> Site:
    return Site(site_id, torch.zeros(6, 2), torch.tensor([0, 0, 0, 1, 1, 1]))


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------ duplicate site ids
def test_a_site_id_given_twice_is_named() -> None:
    sites = [site("clinic-a"), site("clinic-b"), site("clinic-a"), site("clinic-c"), site("clinic-c")]
    with pytest.raises(SiteDataError) as err:
        Federation.split(sites, validation=0, test=1, seed=0)
    assert "['clinic-a', 'clinic-c'] appear more than once" in one_line(err) and "rename or merge" in str(err.value)


def test_a_site_listed_twice_in_one_role_is_named() -> None:
    sites = {s: site(s) for s in ("a", "b")}
    with pytest.raises(SiteDataError, match=r"site 'a' is listed twice in role 'train'"):
        Federation(sites, {"train": ["a", "a"], "test": ["b"]})
    with pytest.raises(SiteDataError, match=r"site 'b' is listed twice in role 'test'"):
        Federation.split([site("a"), site("b"), site("c")], validation=0, test=2, seed=0, test_ids=["b", "b"])


# --------------------------------------------------------------------------- a warm start of another model
@pytest.fixture(scope="module")
def problem():
    from data_adapters.sine import SineData
    from verticals.sine import prepare

    return prepare(SineData(train_sites=4, validation_sites=0, test_sites=1, points_per_site=20), seed=0)


def learner(problem, start=None) -> MetaLearner:
    return MetaLearner(problem, "fomaml", InnerConfig(), FederatedConfig(rounds=1, clients_per_round=2),
                       ServerConfig("adam", 1e-3), seed=0, start=start)


def test_a_warm_start_of_another_shape_names_the_parameter(problem) -> None:
    start = learner(problem).meta_params()
    name = next(iter(start))
    wrong = {**start, name: torch.zeros(*start[name].shape[:-1], start[name].shape[-1] + 3)}
    with pytest.raises(ValueError) as err:
        learner(problem, wrong)  # before: torch's copy_ failed with a size mismatch naming no parameter
    text = one_line(err)
    assert f"other shape (given vs model): {name} {tuple(wrong[name].shape)} vs {tuple(start[name].shape)}" in text
    assert "same vertical" in text


def test_a_warm_start_with_other_names_lists_missing_and_unexpected(problem) -> None:
    start = learner(problem).meta_params()
    renamed = {("body." + k if i == 0 else k): v for i, (k, v) in enumerate(start.items())}
    with pytest.raises(ValueError) as err:
        learner(problem, renamed)
    first = next(iter(start))
    assert f"missing: {first}; unexpected: body.{first}" in one_line(err)


def test_mismatch_lists_a_few_of_many() -> None:
    model = {f"w{i}": torch.zeros(1) for i in range(10)}
    assert mismatch(model, dict(model)) is None
    assert mismatch(model, {}) == "missing: w0, w1, w2, w3 and 6 more"


def test_a_resumed_algorithm_whose_saved_state_does_not_fit_names_the_file(problem, tmp_path) -> None:
    from pipelines.run import trained_learner
    from pipelines.run_state import ResumeError

    cfg = SimpleNamespace(seed=0, fed=FederatedConfig(rounds=1, clients_per_round=2), algorithm_overrides=[],
                          inner=InnerConfig(), server=ServerConfig("adam", 1e-3))  # the fields a meta-learner reads
    good = learner(problem).state_dict()
    name = next(k for k in good if k.startswith("model."))
    saved = {"state_dict": {**good, name: torch.zeros(7, 7)}, "diverged_at": None}
    path = tmp_path / "checkpoints" / "fomaml" / "final.pt"
    with pytest.raises(ResumeError) as err:
        trained_learner(problem, "fomaml", cfg, saved, str(path))
    assert str(path) in one_line(err) and f"other shape (given vs model): {name} (7, 7)" in str(err.value)
    assert "without --resume" in str(err.value)


# ---------------------------------------------------------------------- a held-out site asked to train
@pytest.mark.parametrize("role", ["test", "validation"])
def test_a_held_out_site_asked_to_train_refuses_and_says_why(role: str) -> None:
    from core.federation.client import client_update

    loaded = LoadedSite(problem=SimpleNamespace(), site=SimpleNamespace(site_id="clinic-9"), role=role)
    node = NodeData(loaded, model=nn.Linear(1, 1), loss_fn=lambda *a: 0.0)
    with pytest.raises(NodeConfigError) as err:
        client_update(node, {}, {"fml.seed": 0, "fml.round": 1})
    text = one_line(err)
    assert f"site 'clinic-9' has role '{role}' and was asked to train" in text and "only training sites" in text
