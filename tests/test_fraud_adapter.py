"""The generic tabular adapter on GENERATED files with other column names: reading CSV and Parquet,
federated preprocessing, onboarding with unseen categories, and every bad-input error."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from _fraud_testdata import COLUMNS, ROLES, make_transactions
from core.tasks import SiteDataError
from data_adapters.tabular import TabularData, build_tabular_federation, infer_column_types, load_tabular_site
from data_adapters.sources import read_table
from data_adapters.tabular_io import TabularDataError
from data_adapters.tabular_preprocessing import UNKNOWN, merge_statistics, site_statistics


def cfg(**over) -> TabularData:
    return TabularData(**{**COLUMNS, **ROLES, **over})


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_transactions(0)


@pytest.fixture
def csv_path(tmp_path, frame):
    path = tmp_path / "transactions.csv"
    frame.to_csv(path, index=False)
    return path


def write_csv(tmp_path, df: pd.DataFrame, name: str = "bad.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


# --- reading and the federation --------------------------------------------------------------------


def test_csv_builds_federation_with_roles_and_exclusions(csv_path):
    fed, prep, excluded = build_tabular_federation(cfg(), csv_path, seed=0)
    assert fed.roles["test"] == ["bank_e"] and fed.roles["validation"] == ["bank_d"]
    assert sorted(fed.roles["train"]) == ["bank_a", "bank_b", "bank_c"]
    assert "bank_tiny" in excluded and "needed for a training episode" in excluded["bank_tiny"]
    assert "bank_tiny" not in fed.sites
    site = fed.sites["bank_a"]
    assert site.x.dtype == torch.float32 and site.x.shape == (300, prep["n_features"])
    assert set(site.y.unique().tolist()) == {0, 1} and site.metadata["positives"] == int(site.y.sum())
    assert "txn_id" not in str(prep["feature_names"]) and "is_fraud" not in str(prep["feature_names"])
    json.loads(json.dumps(prep))  # saved with the model: must be JSON


def test_parquet_gives_the_same_features_as_csv(tmp_path, frame, csv_path):
    pq = tmp_path / "transactions.parquet"
    frame.to_parquet(pq, index=False)
    fed_c, prep_c, _ = build_tabular_federation(cfg(), csv_path, seed=0)
    fed_p, prep_p, _ = build_tabular_federation(cfg(), pq, seed=0)
    assert prep_c["feature_names"] == prep_p["feature_names"]
    for sid in fed_c.sites:
        assert torch.allclose(fed_c.sites[sid].x, fed_p.sites[sid].x, atol=1e-5)


def test_types_inferred_unless_given(frame):
    num, cat = infer_column_types(frame, cfg(), "f")
    assert num == ["amount", "hour"] and cat == ["channel", "merchant"]
    num, cat = infer_column_types(frame, cfg(categorical_columns=["hour"]), "f")
    assert num == ["amount"] and cat == ["hour", "channel", "merchant"]


def test_random_roles_are_seeded(csv_path):
    c = cfg(test_sites=[], validation_sites=[], num_test=1, num_validation=1)
    a = build_tabular_federation(c, csv_path, seed=3)[0].roles
    b = build_tabular_federation(c, csv_path, seed=3)[0].roles
    assert a == b and len(a["test"]) == 1 and len(a["validation"]) == 1


# --- federated preprocessing -------------------------------------------------------------------------


def test_federated_statistics_equal_pooled_statistics_of_training_sites(csv_path, frame):
    fed, prep, _ = build_tabular_federation(cfg(), csv_path, seed=0)
    pooled = frame[frame["bank"].isin(fed.roles["train"])]
    for spec in prep["numeric"]:
        col = pooled[spec["name"]].astype(float)
        assert spec["mean"] == pytest.approx(col.mean(), rel=1e-9)
        assert spec["std"] == pytest.approx(col.std(ddof=0), rel=1e-7)
        assert spec["count"] == int(col.notna().sum())
    channel = next(s for s in prep["categorical"] if s["name"] == "channel")
    assert channel["vocabulary"] == sorted(pooled["channel"].unique())  # test site's "crypto" not included
    assert "crypto" not in channel["vocabulary"]


def test_statistics_are_aggregates_only():
    df = pd.DataFrame({"a": [1.0, 2.0, np.nan], "c": ["x", "y", None]})
    s = site_statistics(df, ["a"], ["c"], "site")
    assert s["numeric"]["a"] == {"count": 2, "sum": 3.0, "sumsq": 5.0, "missing": 1}
    assert s["categorical"]["c"] == {"vocabulary": ["x", "y"], "missing": 1}
    prep = merge_statistics([s, site_statistics(df.iloc[:1], ["a"], ["c"], "other")], ["a"], ["c"])
    assert prep["feature_names"] == ["a", "a=<missing>", "c=<missing>", "c=x", "c=y", f"c={UNKNOWN}"]


def test_missing_values_get_indicator_and_mean_fill(csv_path, frame):
    fed, prep, _ = build_tabular_federation(cfg(), csv_path, seed=0)
    names = prep["feature_names"]
    assert "amount=<missing>" in names
    site = fed.sites["bank_a"]
    rows = frame[frame["bank"] == "bank_a"]["amount"].isna().to_numpy()
    assert torch.equal(site.x[:, names.index("amount=<missing>")] == 1, torch.from_numpy(rows))
    assert torch.all(site.x[torch.from_numpy(rows), names.index("amount")] == 0)


def test_large_vocabularies_are_hashed(csv_path):
    _, prep, _ = build_tabular_federation(cfg(max_categories=5, hash_buckets=4), csv_path, seed=0)
    merchant = next(s for s in prep["categorical"] if s["name"] == "merchant")
    assert merchant == {"name": "merchant", "encoding": "hash", "buckets": 4}


def test_positive_label_maps_a_two_valued_label(tmp_path, frame):
    df = frame.assign(is_fraud=np.where(frame["is_fraud"] == 1, "fraud", "ok"))
    fed, _, _ = build_tabular_federation(cfg(positive_label="fraud"), write_csv(tmp_path, df), seed=0)
    assert int(fed.sites["bank_a"].y.sum()) == int(frame[frame.bank == "bank_a"].is_fraud.sum())


# --- onboarding with the saved preprocessing ------------------------------------------------------


def test_onboarding_unseen_category_goes_to_unknown_bucket(tmp_path, csv_path):
    _, prep, _ = build_tabular_federation(cfg(), csv_path, seed=0)
    saved = json.loads(json.dumps(prep))
    new = make_transactions(7, {"bank_new": (60, 0.2)})
    new.loc[:9, "channel"] = "carrier-pigeon"
    new.loc[:4, "amount"] = np.nan
    site = load_tabular_site(write_csv(tmp_path, new, "new.csv"), saved, None)
    assert site.site_id == "bank_new" and site.x.shape == (60, prep["n_features"])
    col = prep["feature_names"].index(f"channel={UNKNOWN}")
    assert torch.all(site.x[:10, col] == 1)
    assert torch.isfinite(site.x).all()


def test_onboarding_file_without_site_column_and_missing_feature(tmp_path, csv_path):
    _, prep, _ = build_tabular_federation(cfg(), csv_path, seed=0)
    new = make_transactions(7, {"bank_new": (30, 0.2)}).drop(columns=["bank"])
    site = load_tabular_site(write_csv(tmp_path, new, "clinic9.csv"), prep, None)
    assert site.site_id == "clinic9"
    with pytest.raises(TabularDataError, match=r"does not match the model's schema: missing feature column\(s\) \['hour'\]"):
        load_tabular_site(write_csv(tmp_path, new.drop(columns=["hour"]), "x.csv"), prep, "x")
    both = make_transactions(1, {"b1": (30, 0.2), "b2": (30, 0.2)})
    with pytest.raises(SiteDataError, match="holds 2 sites"):
        load_tabular_site(write_csv(tmp_path, both, "two.csv"), prep, None)
    assert load_tabular_site(write_csv(tmp_path, both, "two.csv"), prep, "b2").site_id == "b2"


# --- bad input ----------------------------------------------------------------------------------------


def test_missing_columns_are_named_with_what_exists(csv_path):
    with pytest.raises(TabularDataError, match=r"\['label'\] not found; the file has columns: \['txn_id', 'bank'"):
        build_tabular_federation(cfg(label_column="label"), csv_path, seed=0)
    with pytest.raises(TabularDataError, match=r"id column\(s\) \['tx'\] not found"):
        build_tabular_federation(cfg(id_columns=["tx"]), csv_path, seed=0)
    with pytest.raises(TabularDataError, match=r"categorical column\(s\) \['nope'\]"):
        build_tabular_federation(cfg(categorical_columns=["nope"]), csv_path, seed=0)


def test_non_binary_label(tmp_path, frame):
    df = frame.assign(is_fraud=frame["is_fraud"] + (frame.index % 3 == 0))
    with pytest.raises(TabularDataError, match=r"'is_fraud' must be binary .*found values \['0', '1', '2'\]"):
        build_tabular_federation(cfg(), write_csv(tmp_path, df), seed=0)


def test_nan_and_inf(tmp_path, frame):
    df = frame.astype({"is_fraud": float})
    df.loc[4, "is_fraud"] = np.nan
    with pytest.raises(TabularDataError, match=r"label column 'is_fraud' has 1 missing value\(s\) at data rows 5"):
        build_tabular_federation(cfg(), write_csv(tmp_path, df), seed=0)
    df = frame.astype({"hour": float})
    df.loc[[2, 9], "hour"] = np.inf
    with pytest.raises(TabularDataError, match=r"'hour' has 2 infinite value\(s\) at data rows 3, 10"):
        build_tabular_federation(cfg(), write_csv(tmp_path, df), seed=0)
    with pytest.raises(TabularDataError, match=r"'amount' has \d+ missing \(NaN\) value"):
        build_tabular_federation(cfg(allow_missing=False), write_csv(tmp_path, frame), seed=0)
    df = frame.astype({"hour": object})
    df.loc[0, "hour"] = "noon"
    with pytest.raises(TabularDataError, match=r"numeric column 'hour' has non-numeric value\(s\) \['noon'\]"):
        build_tabular_federation(cfg(numeric_columns=["hour"]), write_csv(tmp_path, df), seed=0)


def test_site_with_too_few_positives(csv_path):
    with pytest.raises(SiteDataError, match=r"test site 'bank_tiny' has 2 labelled positive\(s\).*at least 3"):
        build_tabular_federation(cfg(test_sites=["bank_tiny"], min_eval_positives=3), csv_path, seed=0)
    with pytest.raises(SiteDataError, match=r"'bank_zz' is not a value of column 'bank'; sites: bank_a \(36 pos"):
        build_tabular_federation(cfg(test_sites=["bank_zz"]), csv_path, seed=0)
    with pytest.raises(SiteDataError, match="no site is left for training"):
        build_tabular_federation(cfg(train_shots=30, train_query=30), csv_path, seed=0)


def test_empty_and_duplicate_column_names(tmp_path):
    (tmp_path / "e.csv").write_text("bank,,is_fraud\na,1,0\n")
    with pytest.raises(TabularDataError, match=r"position 2 \(1-based\) have an empty name"):
        read_table(tmp_path / "e.csv")
    (tmp_path / "d.csv").write_text("bank,amount,is_fraud,amount\na,1,0,2\n")
    with pytest.raises(TabularDataError, match=r"duplicate column names: 'amount' at positions \[2, 4\]"):
        read_table(tmp_path / "d.csv")


def test_file_not_what_its_extension_says(tmp_path, frame):
    fake_csv = tmp_path / "claims.csv"  # an Excel workbook is a ZIP archive
    with zipfile.ZipFile(fake_csv, "w") as zf:
        zf.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(TabularDataError, match=r"claims.csv: the extension says CSV text but the file is a ZIP"):
        read_table(fake_csv)
    fake_pq = write_csv(tmp_path, frame, "data.parquet")
    with pytest.raises(TabularDataError, match=r"extension says Parquet .*looks like text"):
        read_table(fake_pq)
    pq_as_csv = tmp_path / "real.csv"
    frame.to_parquet(pq_as_csv)
    with pytest.raises(TabularDataError, match="is a Parquet file"):
        read_table(pq_as_csv)
    (tmp_path / "d.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(TabularDataError, match="unsupported file extension; use one of"):
        read_table(tmp_path / "d.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TabularDataError, match="the file is empty"):
        read_table(tmp_path / "empty.csv")


# --- label leaks -------------------------------------------------------------------------------------


def test_a_column_that_encodes_the_label_stops_the_run_naming_it(frame):
    leaky = frame.assign(outcome=np.where(frame["is_fraud"] == 1, "chargeback", "ok"),
                         fraud_copy=frame["is_fraud"] * 2.5)
    with pytest.raises(TabularDataError, match=r"'fraud_copy' \(ROC-AUC 1.000\), 'outcome' \(ROC-AUC 1.000\).*"
                                               r"--data.allow-leaky-columns"):
        build_tabular_federation(cfg(), leaky, seed=0, name="leaky.csv")
    fed, prep, _ = build_tabular_federation(cfg(allow_leaky_columns=True), leaky, seed=0, name="leaky.csv")
    assert "outcome=chargeback" in prep["feature_names"]  # allowed: trained with it
    build_tabular_federation(cfg(), frame, seed=0, name="clean.csv")  # ordinary features pass


def test_leak_scores_from_per_site_counts_match_the_pooled_roc_auc(frame):
    """The server sees only per-site label counts, yet gets the pooled ROC-AUC of a categorical column
    (ordered by its positive rate) exactly."""
    from sklearn.metrics import roc_auc_score

    from data_adapters.tabular_preprocessing import label_histograms, leak_scores

    fed, prep, _ = build_tabular_federation(cfg(), frame, seed=0, name="t.csv")
    train = frame[frame["bank"].isin(fed.roles["train"])]
    hists = [label_histograms(part, part["is_fraud"].to_numpy(), prep, "t.csv")
             for _, part in train.groupby("bank")]
    scores = leak_scores(hists, numeric=["amount", "hour"])
    rate = train.groupby("channel")["is_fraud"].mean()
    pooled = roc_auc_score(train["is_fraud"], train["channel"].map(rate))
    assert scores["channel"] == pytest.approx(max(pooled, 1 - pooled), abs=1e-9)
    assert 0.5 <= scores["amount"] < 0.99
