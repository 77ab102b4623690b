"""The fraud vertical: registration and presets, generated-data fallback, losses and metrics, a short
meta-training run through ``MetaLearner``, the pooled reference rows, onboarding, and (skipped when the
file is absent) the real claims file by Make."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from _fraud_testdata import COLUMNS, ROLES, make_transactions
from core.algorithms.base import InnerConfig
from core.config import FederatedConfig, ServerConfig
from core.learner import MetaLearner, fit_meta_learner
from core.tasks import SiteDataError
from core.vertical import VERTICALS
from data_adapters.fraud_claims import MAKES, default_real_path, synthetic_claims
from data_adapters.sources import GeneratedDataWarning
from verticals.fraud import FraudConfig, load_new_site, prepare
from verticals.fraud.metrics import recall_at_fpr, score_metrics
from verticals.fraud.model import bce_loss, focal_loss, make_criterion
from verticals.fraud.reference import METHOD, reference_baselines

REPO = Path(__file__).resolve().parents[1]
METRICS = {"average_precision", "roc_auc", "recall_at_1pct_fpr", "base_rate"}


@pytest.fixture
def txn_cfg(tmp_path) -> FraudConfig:
    path = tmp_path / "txns.parquet"
    make_transactions(0).to_parquet(path, index=False)
    return FraudConfig(path=str(path), **COLUMNS, **ROLES, hidden=[16])


@pytest.fixture(scope="module")
def synthetic_problem():
    return prepare(FraudConfig(synthetic=True, hidden=[16]), seed=0)


def test_registered_with_presets_and_reference_hook():
    spec = VERTICALS.get("fraud")
    assert spec.data_config is FraudConfig and spec.reference_baselines is reference_baselines
    for preset in ("quick", "full"):
        assert spec.preset_path(preset).exists()
    from pipelines.config import load_preset  # presets must fit the typed run config

    quick = load_preset(spec, "quick")
    assert quick.data.test_sites == ["Accura", "Ford", "Saab"] and quick.data.site_column == "Make"
    full = load_preset(spec, "full")
    assert {"maml", "reptile"} <= set(full.algorithms) and max(full.eval.shots) <= 10


def test_generated_claims_are_deterministic_and_shaped_like_the_real_file():
    a, b = synthetic_claims(0), synthetic_claims(0)
    assert a.equals(b)
    counts = a.groupby("Make")["FraudFound_P"].agg(["count", "sum"])
    for make, (n, rate) in MAKES.items():
        assert counts.loc[make, "count"] == n and counts.loc[make, "sum"] == round(n * rate)


def test_default_config_falls_back_to_generated_claims(monkeypatch, tmp_path):
    monkeypatch.setenv("FML_FRAUD_DATA", str(tmp_path / "absent.csv"))
    assert default_real_path() == tmp_path / "absent.csv"
    expected = f"GENERATED DATA (vehicle-insurance claims): no data at {tmp_path / 'absent.csv'}; using generated"
    with pytest.warns(GeneratedDataWarning, match=re.escape(expected)) as caught:
        problem = prepare(FraudConfig(hidden=[8]), seed=0)
    assert sum(isinstance(w.message, GeneratedDataWarning) for w in caught) == 1
    assert problem.federation.roles["test"] == ["Accura", "Ford", "Saab"]
    assert problem.federation.roles["validation"] == ["Chevrolet"]
    assert "generated synthetic claims" in problem.source
    assert "VW" in problem.excluded_sites  # 8 frauds < 15 needed for a training episode
    monkeypatch.delenv("FML_FRAUD_DATA")
    monkeypatch.setenv("FML_DATA_DIR", str(tmp_path))
    assert default_real_path() == tmp_path / "vehicle_insurance_fraud" / "fraud_oracle.csv"


def test_explicit_missing_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare(FraudConfig(path=str(tmp_path / "nope.csv")), seed=0)


def test_other_dataset_with_other_column_names(txn_cfg):
    problem = prepare(txn_cfg, seed=0)
    assert problem.federation.roles["test"] == ["bank_e"]
    pre = json.loads(json.dumps(problem.preprocessing))
    assert pre["label_column"] == "is_fraud" and pre["model"]["hidden"] == [16]
    model = problem.make_model()
    params = dict(model.named_parameters())
    task = problem.few_shot_task(model, problem.federation.sites["bank_e"], 2, torch.Generator().manual_seed(0))
    assert task.support(params)[0].shape[0] == 4  # 2 frauds + 2 non-frauds
    assert METRICS <= set(task.score(params))


def test_losses():
    z, y = torch.randn(50, 1), (torch.rand(50) < 0.3).long()
    assert torch.allclose(bce_loss(z, y), F.binary_cross_entropy_with_logits(z.reshape(-1), y.float()))
    assert torch.allclose(focal_loss(z, y, gamma=0.0, alpha=0.5), bce_loss(z, y), atol=1e-6)
    w = bce_loss(z, y, pos_weight=5.0)
    per = F.binary_cross_entropy_with_logits(z.reshape(-1), y.float(), reduction="none")
    weights = 1 + 4 * y.float()
    assert torch.allclose(w, (per * weights).sum() / weights.sum())
    assert focal_loss(z, y, gamma=2.0) < focal_loss(z, y, gamma=0.0)
    with pytest.raises(KeyError, match="choose one of: bce, focal"):
        make_criterion("hinge")


def test_metrics():
    y = np.array([0] * 98 + [1, 1])
    perfect = score_metrics(np.arange(100.0), y)
    assert perfect == {"average_precision": 1.0, "roc_auc": 1.0, "recall_at_1pct_fpr": 1.0, "base_rate": 0.02}
    scores = np.zeros(100)
    scores[[0, 98]] = 1.0  # one fraud on top together with one non-fraud (FPR 1/98 > 1%)
    assert recall_at_fpr(y, scores, 0.01) == 0.0
    assert recall_at_fpr(y, scores, 0.02) == 0.5
    assert np.isnan(score_metrics(np.zeros(3), np.zeros(3))["average_precision"])


def test_too_few_positives_for_the_shots(synthetic_problem):
    saab = synthetic_problem.federation.sites["Saab"]  # 11 frauds
    model = synthetic_problem.make_model()
    msg = r"site 'Saab' has 11 labelled positive \(fraud\) row\(s\); 20 shots need at least 21"
    with pytest.raises(SiteDataError, match=msg):
        synthetic_problem.few_shot_task(model, saab, 20, torch.Generator().manual_seed(0))
    synthetic_problem.validate_shots([1, 5, 10])
    with pytest.raises(SiteDataError, match="Saab"):
        synthetic_problem.validate_shots([1, 20])


def test_heldout_rows_are_the_rest_at_natural_rate(synthetic_problem):
    site = synthetic_problem.federation.sites["Ford"]
    task = synthetic_problem.few_shot_task(synthetic_problem.make_model(), site, 5, torch.Generator().manual_seed(1))
    x, y = task.heldout
    assert x.shape[0] == len(site) - 10 and int(y.sum()) == int(site.y.sum()) - 5


@pytest.mark.parametrize("loss", ["bce", "focal"])
def test_short_meta_training_through_metalearner(txn_cfg, loss):
    problem = prepare(dataclasses.replace(txn_cfg, loss=loss), seed=0)
    fed = FederatedConfig(rounds=6, clients_per_round=3, val_every=3)
    learner = MetaLearner(problem, "fomaml", InnerConfig(steps=2, lr=0.1), fed, ServerConfig("adam", 1e-2), seed=0)
    before = {k: v.clone() for k, v in learner.meta_params().items()}
    fit_meta_learner(learner, progress=False)
    after = learner.meta_params()
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    site = problem.federation.sites["bank_e"]
    scores = problem.few_shot_task(learner.model, site, 2, torch.Generator().manual_seed(0)).score(after)
    assert METRICS <= set(scores) and 0.0 <= scores["average_precision"] <= 1.0


def test_vmap_and_loop_rounds_agree(txn_cfg):
    problem = prepare(dataclasses.replace(txn_cfg, loss="focal"), seed=0)
    from core.rounds import client_updates
    from core.algorithms.base import get_algorithm

    meta = {k: v.detach() for k, v in problem.make_model().named_parameters()}
    gen = torch.Generator().manual_seed(0)
    episodes = [problem.train_episode(s, meta, gen) for s in problem.train_site_ids()]
    loss_fn = problem.loss_fn(problem.make_model())
    a = client_updates(get_algorithm("maml"), loss_fn, meta, episodes, InnerConfig(steps=2, lr=0.1), vectorize=True)
    b = client_updates(get_algorithm("maml"), loss_fn, meta, episodes, InnerConfig(steps=2, lr=0.1), vectorize=False)
    assert a.vectorized and not b.vectorized
    assert all(torch.allclose(a.directions[k], b.directions[k], atol=1e-5) for k in meta)


def test_reference_rows_use_the_pipeline_heldout_rows(synthetic_problem):
    run_cfg = SimpleNamespace(eval=SimpleNamespace(shots=[1, 5], draws=2), seed=0)
    test = synthetic_problem.federation.role("test")
    rows = reference_baselines(synthetic_problem, run_cfg, test)
    assert list(rows.columns) == ["site", "method", "shots", "steps", "draw", "metric", "value"]
    assert set(rows["method"]) == {METHOD} and "(non-federated)" in METHOD
    assert set(rows["site"]) == {"Accura", "Ford", "Saab"} and set(rows["steps"]) == {0}
    assert len(rows) == 3 * 2 * 2 * 4
    base = rows[(rows.metric == "base_rate") & (rows.site == "Ford") & (rows.shots == 5)]["value"]
    ford = synthetic_problem.federation.sites["Ford"]
    assert np.allclose(base, (int(ford.y.sum()) - 5) / (len(ford) - 10))
    ap = rows[rows.metric == "average_precision"]["value"]
    assert ap.between(0, 1).all()


def test_onboarding_new_institution_with_saved_preprocessing(tmp_path, txn_cfg):
    problem = prepare(txn_cfg, seed=0)
    saved = json.loads(json.dumps(problem.preprocessing))
    new = make_transactions(3, {"bank_new": (80, 0.2)})
    new.loc[:5, "channel"] = "never-seen"
    path = tmp_path / "new_bank.csv"
    new.to_csv(path, index=False)
    onboard_cfg = dataclasses.replace(txn_cfg, path=str(path))
    p2, site = load_new_site(onboard_cfg, saved, None)
    assert site.site_id == "bank_new" and site.x.shape[1] == problem.preprocessing["n_features"]
    model = p2.make_model()
    scores = p2.few_shot_task(model, site, 2, torch.Generator().manual_seed(0)).score(dict(model.named_parameters()))
    assert METRICS <= set(scores)


def test_real_claims_file_by_make():
    path = default_real_path()
    if not path.exists():
        pytest.skip(f"real claims file absent at {path} (set FML_FRAUD_DATA or FML_DATA_DIR to run this test)")
    problem = prepare(FraudConfig(hidden=[8]), seed=0)
    fed = problem.federation
    assert problem.source == str(path)
    assert fed.roles["test"] == ["Accura", "Ford", "Saab"] and fed.roles["validation"] == ["Chevrolet"]
    assert sorted(fed.roles["train"]) == ["Honda", "Mazda", "Pontiac", "Toyota"]
    assert len(fed.sites["Accura"]) == 472 and int(fed.sites["Accura"].y.sum()) == 59
    rows = sum(len(s) for s in fed.sites.values())
    excluded = [re.match(r"(\d+) positive\(s\) / (\d+) negative", r) for r in problem.excluded_sites.values()]
    assert rows + sum(int(m[1]) + int(m[2]) for m in excluded) == 15420
    assert "PolicyNumber" not in str(problem.preprocessing["feature_names"])
    assert "Make=" not in str(problem.preprocessing["feature_names"])
    by_rep = prepare(FraudConfig(site_column="RepNumber", test_sites=[], validation_sites=[], hidden=[8]), seed=0)
    assert len(by_rep.federation.sites) == 16 and len(by_rep.federation.roles["test"]) == 3
    assert any(n.startswith("Make=") for n in by_rep.preprocessing["feature_names"])


def test_repo_default_data_dir_resolves_from_package_not_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("FML_FRAUD_DATA", raising=False)
    monkeypatch.delenv("FML_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_real_path() == REPO.parent / "shared" / "data" / "vehicle_insurance_fraud" / "fraud_oracle.csv"
    assert os.getcwd() == str(tmp_path)


def test_another_table_starts_from_neutral_defaults(tmp_path):
    """--data.path to a table other than the claims file: no PolicyNumber id column, no named makes; naming
    one test site means one test site (regression: two more were drawn)."""
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).parent))
    from _fraud_testdata import make_transactions

    from verticals.fraud import FraudConfig, prepare

    path = tmp_path / "banks.csv"
    make_transactions(0).to_csv(path, index=False)
    base = dict(path=str(path), site_column="bank", label_column="is_fraud", train_shots=2, train_query=3)
    problem = prepare(FraudConfig(**base), seed=0)
    roles = problem.federation.roles
    assert len(roles["test"]) == 3 and len(roles["validation"]) == 1 and roles["train"]
    assert "txn_id" in str(problem.preprocessing["feature_names"])  # not an id column unless named
    named = prepare(FraudConfig(**base, test_sites=["bank_e"], id_columns=["txn_id"]), seed=0)
    assert named.federation.roles["test"] == ["bank_e"]
    assert "txn_id" not in str(named.preprocessing["feature_names"])


def test_onboarding_names_missing_and_unknown_columns_in_one_line(tmp_path, txn_cfg, caplog):
    problem = prepare(txn_cfg, seed=0)
    prep = json.loads(json.dumps(problem.preprocessing))
    new = make_transactions(3, {"bank_new": (80, 0.2)}).rename(columns={"amount": "amount_eur"})
    path = tmp_path / "renamed.csv"
    new.to_csv(path, index=False)
    with pytest.raises(ValueError) as err:
        load_new_site(dataclasses.replace(txn_cfg, path=str(path)), prep, None)
    message = str(err.value)
    assert "\n" not in message and "missing feature column(s) ['amount']" in message
    assert "the model does not know: ['amount_eur']" in message
    new = make_transactions(3, {"bank_new": (80, 0.2)}).assign(note="x")
    new.to_csv(path, index=False)
    _, site = load_new_site(dataclasses.replace(txn_cfg, path=str(path)), prep, None)
    assert len(site) == 80 and "['note'] are not in the model's schema" in caplog.text
