"""Site statistics from unlabeled inputs (issue: adaptation recipes): the standardization removes a
per-site affine shift, never reads labels, touches only the declared features, and is applied the same
way by ``fml run`` (every site) and ``fml onboard`` (the new site, with its unlabeled rows)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from _fraud_testdata import COLUMNS, ROLES, make_transactions
from core.site_statistics import PREPROCESSING_KEY, SiteStatistics, standardize_site
from core.tasks import Site
import verticals
from core.vertical import VERTICALS

verticals.load_all()


def test_a_per_site_gain_and_offset_disappear():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 30, 5, generator=gen)
    gain, offset = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.8]), torch.tensor([4.0, -1.0, 0.0, 10.0, 0.3])
    layout = SiteStatistics(feature_axis=-1)
    a, _ = layout.standardize(x)
    b, moments = layout.standardize(x * gain + offset)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(torch.tensor(moments["std"]), x.reshape(-1, 5).std(0, unbiased=False) * gain, rtol=1e-4)


def test_centring_removes_an_offset_and_keeps_the_spread():
    x = torch.randn(200, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    out, moments = SiteStatistics(feature_axis=1, scale=False).standardize(x + torch.tensor([5.0, -1.0, 0.0, 2.0]))
    assert out.mean(0).abs().max() < 1e-4
    assert torch.allclose(out.std(0), x.std(0), atol=1e-4)
    assert moments["std"] == pytest.approx(x.std(0, unbiased=False).tolist(), rel=1e-4)  # recorded all the same


def test_only_the_declared_features_change_and_a_constant_one_is_not_blown_up():
    x = torch.cat([torch.randn(50, 2) * 5 + 3, torch.ones(50, 1), torch.randint(0, 2, (50, 1)).float()], dim=1)
    out, _ = SiteStatistics(feature_axis=1, features=(0, 1, 2)).standardize(x)
    assert torch.equal(out[:, 3], x[:, 3])  # a one-hot column not declared numeric stays as it is
    assert torch.equal(out[:, 2], torch.zeros(50))  # constant: mean removed, scale kept
    assert out[:, :2].mean(0).abs().max() < 1e-5 and (out[:, :2].std(0, unbiased=False) - 1).abs().max() < 1e-4


def test_images_are_standardized_per_channel():
    x = torch.rand(10, 3, 8, 8) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1)
    out, moments = SiteStatistics(feature_axis=1).standardize(x)
    assert len(moments["mean"]) == 3
    assert out.transpose(0, 1).reshape(3, -1).std(1, unbiased=False).sub(1).abs().max() < 1e-4


class _Rows:
    site_statistics = SiteStatistics(feature_axis=1)


def test_labels_are_never_read_and_unlabeled_rows_count():
    x = torch.randn(40, 3)
    unlabeled = torch.randn(60, 3) + 2.0
    sites = [Site("s", x.clone(), y) for y in (torch.zeros(40), torch.full((40,), float("nan")), torch.randn(40))]
    moments = [standardize_site(_Rows(), s, [unlabeled]) for s in sites]
    assert moments[0] == moments[1] == moments[2]
    assert all(torch.equal(sites[0].x, s.x) for s in sites)
    labelled_only = standardize_site(_Rows(), Site("t", x.clone(), torch.zeros(40)))
    assert labelled_only != moments[0]  # the unlabeled inputs moved the statistics
    assert sites[0].metadata[PREPROCESSING_KEY] == moments[0]


def test_maintenance_run_standardizes_every_operator_and_records_it():
    spec = VERTICALS.get("maintenance")
    cfg = spec.data_config(site_statistics=True, allow_generated=True, path=None, data_dir="/nonexistent",
                           units_per_site=10)
    with pytest.warns(UserWarning, match="GENERATED"):
        problem = spec.build(cfg, 0)
    assert problem.preprocessing[PREPROCESSING_KEY] == {"scale": False, "first_rows": 20}
    with pytest.warns(UserWarning, match="GENERATED"):
        plain = spec.build(dataclasses.replace(cfg, site_statistics=False), 0)
    assert PREPROCESSING_KEY not in plain.preprocessing
    for site in problem.federation.sites.values():
        raw = plain.federation.sites[site.site_id]
        first = torch.cat([torch.nonzero(raw.groups == g).flatten()[:20] for g in torch.unique(raw.groups)])
        # centred on each engine's first 20 windows (its healthy start), the spread kept
        assert torch.allclose(site.x, raw.x - raw.x[first].mean((0, 1)), atol=1e-4), site.site_id
        assert site.metadata[PREPROCESSING_KEY]["rows"] == len(first)


def test_onboarding_applies_what_the_model_recorded_not_the_verticals_current_layout(tmp_path):
    """A maintenance model registered before the layout was recorded says ``True`` (standardized by every
    input): its new sites must still be standardized; a recorded layout is applied as recorded."""
    from data_adapters.cmapss_sim import generate_cmapss, write_cmapss_files

    train, test, rul = generate_cmapss(24, 6, seed=3, min_life=45, max_life=80)
    write_cmapss_files(tmp_path, "FD001", train, test, rul)
    spec = VERTICALS.get("maintenance")
    cfg = spec.data_config(path=str(tmp_path / "train_FD001.txt"), units_per_site=4, window=12, stride=2,
                           validation_sites=1, test_sites=1, train_units=2, query_units=1, site_statistics=True)
    prep = json.loads(json.dumps(spec.build(cfg, 0).preprocessing))
    onboard_cfg = dataclasses.replace(cfg, path=str(tmp_path / "test_FD001.txt"), rul_path=str(tmp_path / "RUL_FD001.txt"))
    _, raw = spec.load_new_site(onboard_cfg, prep, None)
    sites = {}
    for name, recorded in [("legacy", True), ("all", {"scale": False, "first_rows": 0}), ("first", prep[PREPROCESSING_KEY])]:
        _, sites[name] = spec.new_site(onboard_cfg, {**prep, PREPROCESSING_KEY: recorded}, None)
    legacy = sites["legacy"].x.reshape(-1, raw.x.shape[-1])
    moving = raw.x.reshape(-1, raw.x.shape[-1]).std(0) > 1e-2  # a constant sensor keeps its scale
    assert torch.allclose(legacy.std(0, unbiased=False)[moving], torch.ones(int(moving.sum())), atol=1e-4)
    assert torch.allclose(sites["all"].x, raw.x - raw.x.mean((0, 1)), atol=1e-4)
    first = torch.cat([torch.nonzero(raw.groups == g).flatten()[:20] for g in torch.unique(raw.groups)])
    assert torch.allclose(sites["first"].x, raw.x - raw.x[first].mean((0, 1)), atol=1e-4)
    assert not torch.allclose(sites["first"].x, sites["all"].x, atol=1e-2)  # the fleet's life stage moved the mean
    assert torch.equal(sites["first"].y, raw.y)
    for broken in [{"scale": True}, "yes", {"scale": True, "first_rows": "twenty"}]:  # a hand-edited fml.json
        with pytest.raises(ValueError, match=r"preprocessing\.site_statistics .*fml\.json"):
            spec.new_site(onboard_cfg, {**prep, PREPROCESSING_KEY: broken}, None)


def _fraud_problem(tmp_path, site_statistics: bool):
    from verticals.fraud import FraudConfig

    path = tmp_path / "txns.parquet"
    make_transactions(0).to_parquet(path, index=False)
    cfg = FraudConfig(path=str(path), **COLUMNS, **ROLES, hidden=[16], site_statistics=site_statistics)
    return VERTICALS.get("fraud"), cfg


def test_fraud_onboarding_uses_the_sites_unlabeled_rows(tmp_path):
    spec, cfg = _fraud_problem(tmp_path, True)
    problem = spec.build(cfg, 0)
    prep = json.loads(json.dumps(problem.preprocessing))
    numeric = [i for i, n in enumerate(prep["feature_names"]) if n in {"amount", "hour"}]
    assert sorted(problem.site_statistics.features) == numeric
    new = make_transactions(3, {"bank_new": (120, 0.2)})
    new["amount"] *= 50.0  # another currency: what site statistics remove
    new.loc[80:, "is_fraud"] = np.nan  # 40 rows without a label
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False)
    p2, site = spec.new_site(dataclasses.replace(cfg, path=str(path)), prep, None)
    assert len(site) == 80 and site.unlabeled.shape == (40, prep["n_features"])
    col = numeric[0]
    pooled = torch.cat([site.x[:, col], site.unlabeled[:, col]])
    assert abs(float(pooled.mean())) < 1e-4  # the statistics pooled labelled and unlabeled rows
    # a file without the label column is a file of unlabeled inputs (fml onboard --unlabeled)
    unlabeled_file = tmp_path / "more.csv"
    new.drop(columns=["is_fraud"]).to_csv(unlabeled_file, index=False)
    _, only = spec.load_new_site(dataclasses.replace(cfg, path=str(unlabeled_file)), prep, None)
    assert len(only) == 0 and only.unlabeled.shape[0] == 120


def test_unlabeled_inputs_are_refused_for_a_model_trained_without_site_statistics(tmp_path):
    from pipelines.onboard import unlabeled_inputs

    spec, cfg = _fraud_problem(tmp_path, False)
    prep = spec.build(cfg, 0).preprocessing
    with pytest.raises(ValueError, match="trained without site statistics"):
        unlabeled_inputs(spec, cfg, prep, None, str(tmp_path / "txns.parquet"))


def test_a_vertical_without_input_features_says_so():
    class NoInputs:
        site_statistics = None

    with pytest.raises(ValueError, match="no input features"):
        standardize_site(NoInputs(), Site("s", torch.zeros(2, 1), torch.zeros(2)))


def test_run_registers_site_statistics_and_recipes_and_onboarding_applies_them(tmp_path, fml_home, capsys):
    """``fml run`` with site statistics and extra recipes, then ``fml onboard`` of a new bank whose amounts are
    in another currency, with a file of its unlabeled rows: the statistics pool both, the personalized model
    carries the site's moments, and the registered bundle records each candidate's recipe."""
    from core import tracking
    from pipelines.config import load_preset
    from pipelines.onboard import onboard
    from pipelines.run import run_pipeline

    spec, data = _fraud_problem(tmp_path, True)
    cfg = load_preset(spec, "quick")
    cfg.data = data
    cfg.fed.rounds, cfg.fed.val_every, cfg.fed.clients_per_round = 6, 3, 2
    cfg.eval.shots, cfg.eval.steps, cfg.eval.draws, cfg.eval.select_draws = [2], [0, 3], 2, 1
    cfg.eval.recipes = ["head"]
    cfg.output_dir = str(tmp_path / "out")
    result = run_pipeline(spec, cfg, progress=False)
    assert {"fedavg+head", "fomaml+head", "reptile+head"} <= set(result.summary["method"])
    name = result.registered["name"]  # another table than the claims: its own model (fml-fraud-txns-<hash>)
    assert name.startswith("fml-fraud-txns-")
    loaded = tracking.load_meta_init(f"models:/{name}@champion")
    assert loaded.info["preprocessing"][PREPROCESSING_KEY] == {"scale": True, "first_rows": 0}
    assert all(set(r["recipe_by_steps"].values()) <= {"all", "head"} for r in loaded.info["candidates"].values())
    new = make_transactions(5, {"bank_new": (160, 0.2)})
    new["amount"] *= 50.0
    labelled, unlabeled = tmp_path / "bank_new.csv", tmp_path / "bank_new_unlabeled.csv"
    new.iloc[:100].to_csv(labelled, index=False)
    new.iloc[100:].drop(columns=["is_fraud"]).to_csv(unlabeled, index=False)
    capsys.readouterr()
    out = onboard(spec, data=str(labelled), unlabeled=str(unlabeled), shots=2, overrides={})
    assert ("standardized by the site's OWN statistics, estimated from all its inputs, labels never read (160 inputs, "
            "60 without a label given)") in " ".join(capsys.readouterr().out.split())  # as wrapped to the terminal
    personal = tracking.load_meta_init(out.model_uri)
    moments = personal.info["site_moments"]
    amount = personal.info["preprocessing"]["feature_names"].index("amount")
    prep = personal.info["preprocessing"]["numeric"][0]
    raw = new["amount"].to_numpy()
    z = (raw[~np.isnan(raw)] - prep["mean"]) / prep["std"]
    filled = np.concatenate([z, np.zeros(int(np.isnan(raw).sum()))])  # missing amounts sit at the training mean
    assert moments["mean"][amount] == pytest.approx(filled.mean(), rel=1e-3)  # all 160 rows, not the 100 labelled
    assert "recipe" in MlflowClient().get_run(out.run_id).data.tags


def test_maintenance_onboarding_reads_an_unlabeled_fleet_file_without_the_rul_file(tmp_path):
    from data_adapters.cmapss_sim import generate_cmapss, write_cmapss_files
    from pipelines.onboard import unlabeled_inputs

    train, test, rul = generate_cmapss(24, 6, seed=3, min_life=45, max_life=80)
    write_cmapss_files(tmp_path, "FD001", train, test, rul)
    more, more_test, more_rul = generate_cmapss(5, 1, seed=9, min_life=45, max_life=80)
    write_cmapss_files(tmp_path / "more", "FD001", more, more_test, more_rul)  # read: train_ (no RUL file needed)
    spec = VERTICALS.get("maintenance")
    cfg = spec.data_config(path=str(tmp_path / "train_FD001.txt"), units_per_site=4, window=12, stride=2,
                           validation_sites=1, test_sites=1, train_units=2, query_units=1, site_statistics=True)
    prep = json.loads(json.dumps(spec.build(cfg, 0).preprocessing))
    onboard_cfg = dataclasses.replace(cfg, path=str(tmp_path / "test_FD001.txt"), rul_path=str(tmp_path / "RUL_FD001.txt"))
    extra = unlabeled_inputs(spec, onboard_cfg, prep, None, str(tmp_path / "more" / "train_FD001.txt"))
    assert extra and extra[0].shape[1:] == (12, len(prep["sensors"]))
    _, alone = spec.new_site(onboard_cfg, prep, None)
    _, pooled = spec.new_site(onboard_cfg, prep, None, extra)
    assert alone.metadata[PREPROCESSING_KEY] != pooled.metadata[PREPROCESSING_KEY]
    assert torch.equal(alone.y, pooled.y)


def _clinic(site_id: str, gain: float, offset: float, seed: int) -> Site:
    gen = torch.Generator().manual_seed(seed)
    anatomy = torch.linspace(0, 1, 12).view(1, 1, 12, 1) * torch.linspace(1, 0, 12).view(1, 1, 1, 12)
    x = anatomy + 0.3 * torch.rand(30, 1, 12, 12, generator=gen)
    return Site(site_id, x * gain + offset, torch.full((30,), float("nan")))  # labels unreadable: never read


def test_an_inverted_site_is_oriented_back_and_a_normal_one_kept():
    from core.site_statistics import reference_profile

    layout = SiteStatistics(feature_axis=1, orient=True)
    train = [_clinic("a", 1.0, 0.0, 0), _clinic("b", 2.0, 0.5, 1), _clinic("c", 0.5, -1.0, 2)]
    oriented = dataclasses.replace(layout, reference=reference_profile(layout, train))
    normal, inverted = _clinic("d", 1.5, 0.2, 3), _clinic("e", 1.5, 0.2, 3)
    inverted.x = 1.0 - inverted.x  # the same images exported as a negative
    out_normal, m_normal = oriented.standardize(normal.x)
    out_inverted, m_inverted = oriented.standardize(inverted.x)
    assert m_normal["sign"] == [1.0] and m_inverted["sign"] == [-1.0]
    torch.testing.assert_close(out_inverted, out_normal, atol=1e-4, rtol=1e-4)
    plain, _ = SiteStatistics(feature_axis=1).standardize(inverted.x)
    torch.testing.assert_close(plain, -out_normal, atol=1e-4, rtol=1e-4)  # without orienting: a negative
    with pytest.raises(ValueError, match="no reference profile"):
        layout.standardize(normal.x)
    with pytest.raises(ValueError, match=r"images \[n, C, H, W\]"):
        oriented.standardize(torch.randn(10, 3))


def test_orienting_only_keeps_a_normal_site_bit_for_bit_and_reflects_an_inverted_one_about_its_mean():
    from core.site_statistics import reference_profile

    layout = SiteStatistics(feature_axis=1, scale=False, centre=False, orient=True)
    layout = dataclasses.replace(layout, reference=reference_profile(layout, [_clinic("a", 1.0, 0.0, 0)]))
    normal = _clinic("d", 1.5, 0.2, 3)
    kept, moments = layout.standardize(normal.x)
    assert torch.equal(kept, normal.x) and moments["sign"] == [1.0]
    inverted = 1.0 - normal.x
    reflected, moments = layout.standardize(inverted)
    assert moments["sign"] == [-1.0]
    torch.testing.assert_close(reflected, 2 * inverted.mean() - inverted, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reflected - reflected.mean(), normal.x - normal.x.mean(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="only orients"):
        SiteStatistics(feature_axis=1, centre=False, orient=True)  # scaling without centring means nothing


def test_an_oriented_layout_round_trips_through_the_record():
    from core.site_statistics import layout_of, reference_profile

    layout = SiteStatistics(feature_axis=1, scale=False, centre=False, orient=True)
    layout = dataclasses.replace(layout, reference=reference_profile(layout, [_clinic("a", 1.0, 0.0, 0)]))
    record = json.loads(json.dumps(layout.record))  # as a model's fml.json holds it
    problem = type("P", (), {"site_statistics": SiteStatistics(feature_axis=1, scale=False, centre=False, orient=True)})()
    assert layout_of(problem, record) == layout
    standardizing = dataclasses.replace(layout, scale=True, centre=True)
    assert layout_of(problem, json.loads(json.dumps(standardizing.record))) == standardizing
    assert not layout_of(problem, {"scale": True, "first_rows": 0}).orient  # older models: not oriented
    assert not layout_of(problem, True).orient
    for broken in [{**record, "reference": "flat"}, {**record, "scale": True}]:  # a hand-edited fml.json
        with pytest.raises(ValueError, match=r"preprocessing\.site_statistics .*fml\.json"):
            layout_of(problem, broken)


def test_the_recorded_layout_is_described_as_what_it_does():
    from core.site_statistics import describe

    assert describe(True).startswith("every site's input features are standardized by the site's OWN statistics")
    assert "centred on the site's OWN statistics, estimated from each unit's first 20 inputs" in describe(
        {"scale": False, "first_rows": 20})
    oriented = describe({"scale": False, "first_rows": 0, "centre": False, "orient": True})
    assert oriented.startswith("each site's images are oriented by the training sites' mean image") and \
        "standardized" not in oriented and oriented.endswith("labels never read")
