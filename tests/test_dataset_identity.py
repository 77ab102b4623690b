"""Model identity (issue 15, item 1): a run on another dataset registers under a name derived from the data,
with its own @champion, and never competes with the vertical's default model; ``fml models`` shows each
version's dataset; ``fml onboard`` finds the model whose schema a data file fits, or says which --model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from mlflow.tracking import MlflowClient

import verticals
from _fraud_testdata import COLUMNS, ROLES, make_transactions
from core.tasks import SiteDataError
from core.vertical import VERTICALS
from data_adapters.fraud_claims import synthetic_claims
from pipelines.dataset_identity import dataset_identity, is_default_dataset, slug
from verticals.fraud import FraudConfig

verticals.load_all()


def test_default_options_keep_the_vertical_name_and_any_dataset_option_changes_it():
    assert is_default_dataset(FraudConfig())
    assert is_default_dataset(FraudConfig(site_statistics=True, test_sites=["Ford"], hidden=[8]))  # not the data
    for change in ({"path": "other.csv"}, {"site_column": "RepNumber"}, {"label_column": "y"},
                   {"id_columns": []}, {"synthetic": True}):
        assert not is_default_dataset(FraudConfig(**change)), change

    @dataclass
    class NoDatasetOptions:  # a vertical without a data file (sine, robotics): always its default dataset
        rows: int = 3

    assert is_default_dataset(NoDatasetOptions(rows=9))


def test_dataset_names_are_safe_short_and_follow_the_schema(tmp_path):
    spec = VERTICALS.get("fraud")
    table = make_transactions(0)
    first, renamed = tmp_path / "Bank Transactions (2024).csv", tmp_path / "renamed.csv"
    table.to_csv(first, index=False)
    table.rename(columns={"amount": "amount_eur"}).to_csv(renamed, index=False)
    cfg = FraudConfig(path=str(first), hidden=[8], **COLUMNS, **ROLES)
    a = dataset_identity(spec, cfg, spec.build(cfg, 0))
    again = dataset_identity(spec, cfg, spec.build(cfg, 1))  # other roles, same data and schema
    b = dataset_identity(spec, dataclasses.replace(cfg, path=str(renamed)), spec.build(dataclasses.replace(
        cfg, path=str(renamed)), 0))
    assert a.name.startswith("bank-transactions-2024-") and len(a.name.rsplit("-", 1)[1]) == 6
    assert a == again and not a.default
    assert a.model_name("fraud") == f"fml-fraud-{a.name}"
    assert a.schema == {"numeric": ["amount", "hour"], "categorical": ["channel", "merchant"], "label": "is_fraud",
                        "site": "bank"}
    assert b.schema_sha256 != a.schema_sha256 and b.name.startswith("renamed-")
    assert slug("///") == "data" and slug("A b__C.v2") == "a-b-c-v2"


def _quick(cfg, data, out):
    cfg.data = data
    cfg.algorithms = ["fomaml"]
    cfg.fed.rounds, cfg.fed.val_every, cfg.fed.clients_per_round = 4, 2, 2
    cfg.eval.shots, cfg.eval.steps, cfg.eval.draws, cfg.eval.select_draws = [2], [0, 2], 1, 1
    cfg.eval.lr_grid = [0.05]
    cfg.output_dir = str(out)
    return cfg


def test_a_run_on_another_table_gets_its_own_name_and_champion(tmp_path, fml_home, monkeypatch, capfd):
    """Regression: the second table's run took ``fml-fraud@champion`` from the claims model (or, once
    identities were compared, became its not-comparable challenger); now it registers as
    ``fml-fraud-<dataset>`` @champion and the claims model is untouched. Onboarding finds each file's model."""
    from core import tracking
    from pipelines.cli import main as fml
    from pipelines.config import load_preset
    from pipelines.onboard import onboard
    from pipelines.run import run_pipeline

    monkeypatch.setenv("FML_FRAUD_DATA", str(tmp_path / "absent.csv"))  # default options: the generated claims
    spec = VERTICALS.get("fraud")
    claims = run_pipeline(spec, _quick(load_preset(spec, "quick"), FraudConfig(hidden=[8], train_shots=2,
                                                                               train_query=3), tmp_path / "a"),
                          progress=False)
    assert claims.registered["name"] == "fml-fraud" and claims.registered["alias"] == "champion"
    table = tmp_path / "transactions.csv"
    make_transactions(0).to_csv(table, index=False)
    other = run_pipeline(spec, _quick(load_preset(spec, "quick"), FraudConfig(path=str(table), hidden=[8], **COLUMNS,
                                                                              **ROLES), tmp_path / "b"),
                         progress=False)
    name = other.registered["name"]
    assert name.startswith("fml-fraud-transactions-") and other.registered["alias"] == "champion"
    assert "first version" in other.registered["reason"]
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions("name='fml-fraud'")] == ["1"]  # nothing added to it
    assert str(client.get_model_version_by_alias("fml-fraud", "champion").version) == "1"
    version = client.get_model_version_by_alias(name, "champion")
    assert version.tags["dataset"] == name[len("fml-fraud-"):] and len(version.tags["data_sha256"]) == 12
    assert f"dataset: `{version.tags['dataset']}`" in version.description
    assert "label: `is_fraud`; site: `bank`" in version.description
    assert tracking.load_meta_init(f"models:/{name}@champion").info["dataset"]["schema"]["label"] == "is_fraud"

    # fml models: every version's dataset (name and fingerprint)
    rows = {r["name"]: r for r in tracking.list_models()}
    claims_dataset = rows["fml-fraud"]["dataset"]  # named after the data the default options read
    assert rows[name]["dataset"] == version.tags["dataset"] and claims_dataset.startswith("generated-synthetic-claims")
    assert all(len(r["fingerprint"]) == 12 for r in rows.values())
    capfd.readouterr()
    assert fml(["models"]) == 0
    listing = capfd.readouterr().out
    assert "dataset" in listing and version.tags["dataset"] in listing

    # onboarding without --model: each file goes to the model whose schema it fits
    bank = tmp_path / "bank_new.csv"
    make_transactions(5, {"bank_new": (120, 0.2)}).to_csv(bank, index=False)
    assert onboard(spec, data=str(bank), shots=2).choice is not None
    runs = client.search_runs([client.get_experiment_by_name("fml-fraud-onboarding").experiment_id])
    assert runs[0].data.tags["source_model"] == name
    make = synthetic_claims(0)
    make = make[make["Make"] == "Honda"].head(400)
    make.to_csv(tmp_path / "honda.csv", index=False)
    honda = onboard(spec, data=str(tmp_path / "honda.csv"), shots=2, register=True)
    listed = {r["name"]: r for r in tracking.list_models()}  # fml models: a site model's fingerprint is short too
    assert listed[honda.registered["name"]]["site"] == "Honda"
    assert len(listed[honda.registered["name"]]["fingerprint"]) == 12
    runs = client.search_runs([client.get_experiment_by_name("fml-fraud-onboarding").experiment_id],
                              order_by=["attributes.start_time DESC"])
    assert runs[0].data.tags["source_model"] == "fml-fraud"
    # a file that fits neither: one line naming each model's reason and the --model to pass
    odd = tmp_path / "odd.csv"
    make_transactions(3, {"bank_x": (80, 0.2)}).rename(columns={"amount": "amount_eur"}).to_csv(odd, index=False)
    with pytest.raises(SiteDataError) as err:
        onboard(spec, data=str(odd), shots=2)
    message = str(err.value)
    assert "\n" not in message and "fits none of the registered fraud models" in message
    assert f"{name}: " in message and "missing feature column(s) ['amount']" in message and "--model" in message
    # a file without the label column: the error names the column the model reads labels from
    unlabelled = tmp_path / "unlabelled.csv"
    make_transactions(5, {"bank_new": (120, 0.2)}).drop(columns=["is_fraud"]).to_csv(unlabelled, index=False)
    with pytest.raises(SiteDataError, match="no label column 'is_fraud'"):
        onboard(spec, data=str(unlabelled), shots=2, model_uri=f"models:/{name}@champion")


def test_the_verticals_own_presets_read_their_default_dataset():
    """A preset that only changes sizes, roles or models keeps ``fml-<vertical>``; ``rep_quick`` (the claims file
    with claim handlers as sites: another site column, so another schema) registers under its own name."""
    from pipelines.config import load_preset

    for name in VERTICALS.names():
        spec = VERTICALS.get(name)
        for preset in sorted(p.stem for p in spec.presets_dir.glob("*.yaml")):
            expected = (name, preset) != ("fraud", "rep_quick")
            assert is_default_dataset(load_preset(spec, preset).data) == expected, (name, preset)
