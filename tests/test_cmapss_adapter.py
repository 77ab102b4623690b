"""C-MAPSS / fleet-table adapter: bad input, RUL labels, windows, federated normalization, simulation.

Every test writes its own small GENERATED files into tmp_path; the real-data test reads
``$FML_CMAPSS_DIR`` (default ``../shared/data/cmapss``) and is skipped when the files are absent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_adapters.cmapss import (
    CmapssConfig,
    build_cmapss_federation,
    default_data_dir,
    load_new_fleet_site,
    load_source,
)
from data_adapters.cmapss_features import (
    assign_conditions,
    fit_conditions,
    normalization_from_moments,
    site_conditions,
    unit_windows,
    window_ends,
)
from data_adapters.cmapss_io import (
    CMAPSS_SENSORS,
    FleetDataError,
    TableColumns,
    read_cmapss,
    read_fleet_table,
)
from data_adapters.sources import combine_moments, moments
from data_adapters.cmapss_sim import (
    OperatorShift,
    apply_operator_shift,
    generate_cmapss,
    write_cmapss_files,
)


@pytest.fixture()
def small_dir(tmp_path: Path) -> Path:
    """Train (16 units run to failure), test (6 truncated units) and RUL files of a tiny generated fleet."""
    train, test, rul = generate_cmapss(16, 6, seed=3, min_life=40, max_life=70)
    write_cmapss_files(tmp_path, "FD001", train, test, rul)
    return tmp_path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------- bad input


def test_wrong_column_count_names_file_and_line(small_dir: Path) -> None:
    lines = _lines(small_dir / "train_FD001.txt")
    lines[4] = " ".join(lines[4].split()[:25])
    bad = _write(small_dir / "train_FD009.txt", lines)
    with pytest.raises(FleetDataError, match=r"train_FD009\.txt, line 5: 25 columns, expected 26"):
        read_cmapss(bad)


def test_non_numeric_cell_names_line_and_column(small_dir: Path) -> None:
    lines = _lines(small_dir / "train_FD001.txt")
    cells = lines[7].split()
    cells[9] = "n/a"
    lines[7] = " ".join(cells)
    bad = _write(small_dir / "train_bad.txt", lines)
    with pytest.raises(FleetDataError, match=r"line 8, column 10 \(s_5\): 'n/a' is not a finite number"):
        read_cmapss(bad)


def test_rul_file_length_mismatch(small_dir: Path) -> None:
    rul = _write(small_dir / "RUL_short.txt", _lines(small_dir / "RUL_FD001.txt")[:-1])
    with pytest.raises(FleetDataError, match=r"5 RUL values but .*test_FD001\.txt has 6 units"):
        read_cmapss(small_dir / "test_FD001.txt", rul)


def test_test_file_without_rul_is_an_error(small_dir: Path) -> None:
    with pytest.raises(FleetDataError, match="need the matching RUL file"):
        read_cmapss(small_dir / "test_FD001.txt")


def test_duplicate_unit_cycle_rows(small_dir: Path) -> None:
    lines = _lines(small_dir / "train_FD001.txt")
    bad = _write(small_dir / "train_dup.txt", lines[:10] + [lines[3]] + lines[10:])
    with pytest.raises(FleetDataError, match=r"unit 1 has 2 rows for cycle 4"):
        read_cmapss(bad)


def test_unit_too_short_for_window_rejected_or_padded(small_dir: Path) -> None:
    cfg = CmapssConfig(path=str(small_dir / "train_FD001.txt"), units_per_site=4, validation_sites=1,
                       test_sites=1, window=60)
    with pytest.raises(FleetDataError, match=r"unit .* has \d+ cycles, fewer than the window length 60"):
        build_cmapss_federation(cfg, seed=0)
    cfg.short_units = "pad"
    fed, _ = build_cmapss_federation(cfg, seed=0)
    assert all(s.x.shape[1] == 60 for s in fed.sites.values())


def test_bad_config_choice_lists_choices() -> None:
    with pytest.raises(ValueError, match="short_units"):
        CmapssConfig(short_units="drop")


def test_table_errors_name_column_and_row(tmp_path: Path) -> None:
    df = pd.DataFrame({"site": ["a"] * 4, "unit": [1, 1, 1, 1], "time": [1, 2, 3, 4], "temp": [1.0, 2.0, "x", 4.0]})
    df.to_csv(tmp_path / "fleet.csv", index=False)
    with pytest.raises(FleetDataError, match=r"fleet\.csv, line 4, column 'temp': 'x' is not a finite number"):
        read_fleet_table(tmp_path / "fleet.csv", TableColumns())
    with pytest.raises(FleetDataError, match=r"missing column 'cycle'"):
        read_fleet_table(tmp_path / "fleet.csv", TableColumns(time_column="cycle"))
    df["temp"] = [1.0, 2.0, 3.0, 4.0]
    df["time"] = [1, 2, 2, 4]
    df.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(FleetDataError, match=r"unit '1' has 2 rows for cycle 2"):
        read_fleet_table(tmp_path / "dup.csv", TableColumns())


# ------------------------------------------------------------------------------------- labels, windows


def test_rul_labels_train_and_test(small_dir: Path) -> None:
    train = read_cmapss(small_dir / "train_FD001.txt").frame
    last = train.groupby("unit")["cycle"].transform("max")
    np.testing.assert_array_equal(train["rul"], last - train["cycle"])
    rul = np.loadtxt(small_dir / "RUL_FD001.txt")
    test = read_cmapss(small_dir / "test_FD001.txt", small_dir / "RUL_FD001.txt").frame
    for i, (unit, grp) in enumerate(test.groupby("unit")):
        assert grp["rul"].iloc[-1] == rul[i]
        np.testing.assert_array_equal(grp["rul"], rul[i] + grp["cycle"].max() - grp["cycle"])


def test_rul_cap_applied_in_windows(small_dir: Path) -> None:
    cfg = CmapssConfig(path=str(small_dir / "train_FD001.txt"), units_per_site=4, window=10, rul_cap=30.0,
                       simulate=False)
    fed, _ = build_cmapss_federation(cfg, seed=0)
    ys = np.concatenate([s.y.numpy() for s in fed.sites.values()])
    assert ys.max() == 30.0 and ys.min() == 0.0


def test_window_ends_anchor_last_cycle_and_content() -> None:
    np.testing.assert_array_equal(window_ends(10, 4, 3), [3, 6, 9])
    np.testing.assert_array_equal(window_ends(10, 4, 4), [5, 9])
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    win = unit_windows(values, window_ends(10, 4, 3), 4)
    assert win.shape == (3, 4, 2)
    np.testing.assert_array_equal(win[1], values[3:7])
    padded = unit_windows(values[:3], window_ends(3, 5, 1), 5)
    np.testing.assert_array_equal(padded[0], np.concatenate([values[:1], values[:1], values[:3]]))


def test_site_windows_labels_and_eval_cut(small_dir: Path) -> None:
    cfg = CmapssConfig(path=str(small_dir / "train_FD001.txt"), units_per_site=4, window=8, stride=2,
                       simulate=False, eval_cut="last")
    fed, prep = build_cmapss_federation(cfg, seed=0)
    site = next(iter(fed.sites.values()))
    assert site.x.shape[1:] == (8, len(prep["sensors"]))
    cut = site.metadata["cut_rows"]
    assert len(cut) == len(site.metadata["units"]) == len(set(site.groups.tolist()))
    assert (site.y[cut] == 0).all()  # run-to-failure units: the last window is at failure
    cfg.eval_cut = "random"
    fed2, _ = build_cmapss_federation(cfg, seed=0)
    assert (next(iter(fed2.sites.values())).y[next(iter(fed2.sites.values())).metadata["cut_rows"]] > 0).any()


# ------------------------------------------------------------------------- federated normalization


def test_federated_normalization_equals_pooled_training_statistics(small_dir: Path) -> None:
    cfg = CmapssConfig(path=str(small_dir / "train_FD001.txt"), units_per_site=3, validation_sites=1, test_sites=1)
    fed, prep = build_cmapss_federation(cfg, seed=1)
    # the same simulated rows, pooled over TRAINING sites only
    from data_adapters.cmapss import _site_frames

    main = load_source(cfg)
    raw = {s.site_id: s.frame for s in _site_frames(main, cfg, np.random.default_rng(1), "op", True)}
    pooled = pd.concat([raw[s] for s in fed.roles["train"]])
    kept = prep["sensors"]
    np.testing.assert_allclose(prep["mean"][0], pooled[kept].mean().to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(prep["std"][0], pooled[kept].std(ddof=0).to_numpy(), rtol=1e-6)
    everything = pd.concat(raw.values())
    assert not np.allclose(prep["mean"][0], everything[kept].mean().to_numpy(), rtol=1e-9)  # test sites excluded
    assert {"s_1", "s_5", "s_10", "s_16", "s_18", "s_19"} <= set(prep["dropped_sensors"])  # constant sensors


def test_moments_per_condition_match_pooled() -> None:
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=(50, 3)) * [1, 2, 0], rng.integers(0, 2, 50)) for _ in range(3)]
    stats = normalization_from_moments(combine_moments([moments(v, c, 2) for v, c in parts]), min_std=1e-3)
    allv = np.concatenate([v for v, _ in parts])
    allc = np.concatenate([c for _, c in parts])
    for c in range(2):
        np.testing.assert_allclose(stats["mean"][c], allv[allc == c].mean(0), atol=1e-12)
        np.testing.assert_allclose(stats["std"][c, :2], allv[allc == c].std(0)[:2], rtol=1e-9)
    assert stats["keep"].tolist() == [True, True, False]


def test_operating_conditions_found_and_assigned() -> None:
    frame = pd.DataFrame({"a": [0.001, 9.998, 20.003, 0.0, 10.002], "b": [0.0, 0.25, 0.7, 0.0001, 0.2502]})
    cond = fit_conditions([site_conditions(frame.iloc[:2], ["a", "b"], [0, 2]),
                           site_conditions(frame.iloc[2:], ["a", "b"], [0, 2])], [0, 2])
    assert len(cond["centers"]) == 3
    ids = assign_conditions(frame, ["a", "b"], cond)
    assert ids[0] == ids[3] and ids[1] == ids[4] and len(set(ids.tolist())) == 3


def test_per_condition_normalization_on_multi_condition_fleet(tmp_path: Path) -> None:
    train, _, _ = generate_cmapss(12, 2, seed=5, min_life=40, max_life=60)
    cond = np.arange(len(train)) % 2
    train[:, 2] = np.where(cond == 1, 20.0, 0.0) + train[:, 2]
    train[:, 6:] += (cond * 50.0)[:, None] * (train[:, 6:].std(0) > 0)  # a condition moves every live sensor
    write_cmapss_files(tmp_path, "FD002", train, train[:100], np.zeros(1))
    cfg = CmapssConfig(path=str(tmp_path / "train_FD002.txt"), units_per_site=3, window=10,
                       regime_concentration=0.0)
    fed, prep = build_cmapss_federation(cfg, seed=0)
    assert prep["normalize"] == "condition" and len(prep["conditions"]["centers"]) == 2
    x = np.concatenate([fed.sites[s].x[:, -1].numpy() for s in fed.roles["train"]])
    assert np.abs(x.mean(0)).max() < 0.6  # the 50-unit condition jump is normalized away


# ---------------------------------------------------------------------------------- simulation


def test_calibration_gain_applies_to_deviations_from_fleet_mean() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"unit": np.repeat([1, 2], 50), "hot": 640 + rng.normal(0, 0.5, 100), "flat": 100.0})
    mean, std = np.array([[640.0, 100.0]]), np.array([[0.5, 0.0]])
    shift = OperatorShift(gain=np.array([1.03, 1.5]), offset=np.array([0.0, 2.0]), noise=0.0)
    out = apply_operator_shift(frame, ["hot", "flat"], np.zeros(100, int), mean, std, shift, rng, min_rows=1)
    np.testing.assert_allclose(out["hot"] - 640, 1.03 * (frame["hot"] - 640))
    assert abs(out["hot"].mean() - frame["hot"].mean()) < 0.1  # not 3% of 640 (~19 K)
    assert (out["flat"] == 100.0).all()  # a constant sensor stays constant
    assert frame["hot"].iloc[0] != out["hot"].iloc[0]  # input not modified (a new frame)


def test_regime_mix_keeps_labels_and_failure_rows() -> None:
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame({"unit": np.repeat([1, 2], n // 2), "cycle": np.tile(np.arange(1, n // 2 + 1), 2),
                          "s": rng.normal(size=n)})
    frame["rul"] = 100 - frame["cycle"]
    cond = np.tile([0, 1], n // 2)
    shift = OperatorShift(np.ones(1), np.zeros(1), 0.0, regime_weights=np.array([0.9, 0.1]))
    out = apply_operator_shift(frame, ["s"], cond, np.zeros((2, 1)), np.ones((2, 1)), shift, rng, min_rows=5)
    assert len(out) < n
    np.testing.assert_array_equal(out["rul"], 100 - out["cycle"])
    assert out.groupby("unit")["cycle"].max().tolist() == [100, 100]


def test_simulated_operators_differ_and_are_seeded(small_dir: Path) -> None:
    cfg = CmapssConfig(path=str(small_dir / "train_FD001.txt"), units_per_site=4)
    fed_a, _ = build_cmapss_federation(cfg, seed=7)
    fed_b, _ = build_cmapss_federation(cfg, seed=7)
    sid = sorted(fed_a.sites)[0]
    assert (fed_a.sites[sid].x == fed_b.sites[sid].x).all()
    gains = [fed_a.sites[s].metadata["simulation"]["gain"]["s_2"] for s in sorted(fed_a.sites)]
    assert len(set(gains)) == len(gains)


# ----------------------------------------------------------------------- sources, onboarding, tables


def test_default_dir_and_generated_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FML_CMAPSS_DIR", str(tmp_path / "nowhere"))
    assert default_data_dir() == tmp_path / "nowhere"
    monkeypatch.delenv("FML_CMAPSS_DIR")
    monkeypatch.setenv("FML_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path / "cmapss"
    with pytest.warns(UserWarning, match="GENERATED"):
        fleet = load_source(CmapssConfig())
    assert fleet.source.startswith("GENERATED") and fleet.frame["unit"].nunique() == 100
    with pytest.raises(FileNotFoundError, match="FML_CMAPSS_DIR"):
        load_source(CmapssConfig(allow_generated=False))


def test_onboarding_site_from_test_and_rul_files(small_dir: Path) -> None:
    cfg = CmapssConfig(path=str(small_dir / "train_FD001.txt"), units_per_site=4, window=20)
    _, prep = build_cmapss_federation(cfg, seed=0)
    new = CmapssConfig(path=str(small_dir / "test_FD001.txt"), rul_path=str(small_dir / "RUL_FD001.txt"), window=20)
    site = load_new_fleet_site(new, prep, "fleet-b")
    rul = np.loadtxt(small_dir / "RUL_FD001.txt")
    assert site.site_id == "fleet-b" and len(site.metadata["units"]) == 6
    np.testing.assert_allclose(site.y[site.metadata["cut_rows"]].numpy(), np.minimum(rul, 125.0))
    assert site.x.shape[-1] == len(prep["sensors"])


def test_generic_table_sites_and_parquet(tmp_path: Path) -> None:
    train, _, _ = generate_cmapss(9, 1, seed=2, min_life=30, max_life=40)
    df = pd.DataFrame(train[:, [0, 1, *range(5, 26)]], columns=["unit", "time", *CMAPSS_SENSORS])
    df["plant"] = np.where(df["unit"] <= 3, "north", np.where(df["unit"] <= 6, "south", "east"))
    df.to_parquet(tmp_path / "fleet.parquet")
    cfg = CmapssConfig(path=str(tmp_path / "fleet.parquet"), site_column="plant", window=10, validation_sites=0,
                       test_sites=1, test_site_ids=["east"])
    fed, prep = build_cmapss_federation(cfg, seed=0)
    assert sorted(fed.sites) == ["east", "north", "south"] and fed.roles["test"] == ["east"]
    assert not fed.sites["east"].metadata["simulated"]
    site = load_new_fleet_site(cfg, prep, "south")
    assert len(site.metadata["units"]) == 3
    with pytest.raises(ValueError, match="holds sites"):
        load_new_fleet_site(cfg, prep, None)


# --------------------------------------------------------------------------------------- real data


def test_real_fd001_if_present() -> None:
    folder = default_data_dir()
    if not (folder / "train_FD001.txt").is_file():
        pytest.skip(f"C-MAPSS FD001 not found in {folder} (set FML_CMAPSS_DIR); the adapter logic is tested "
                    "on generated files")
    train = read_cmapss(folder / "train_FD001.txt")
    test = read_cmapss(folder / "test_FD001.txt", folder / "RUL_FD001.txt")
    assert len(train.frame) == 20631 and train.frame["unit"].nunique() == 100
    assert test.frame["unit"].nunique() == 100
    fed, prep = build_cmapss_federation(CmapssConfig(data_dir=str(folder)), seed=0)
    assert len(fed.sites) == 10 and len(fed.roles["test"]) == 2
    assert set(prep["dropped_sensors"]) == {"s_1", "s_5", "s_6", "s_10", "s_16", "s_18", "s_19"}


def test_include_test_file_merges_truncated_units(small_dir: Path) -> None:
    from data_adapters.cmapss import operator_frames

    cfg = CmapssConfig(data_dir=str(small_dir), include_test_file=True, units_per_site=4, window=20,
                       validation_sites=1, test_sites=1)
    fed, _ = build_cmapss_federation(cfg, seed=0)
    units = [u for s in fed.sites.values() for u in s.metadata["units"]]
    assert len(units) == 16 + 6 and sum(u.startswith("test-") for u in units) == 6
    rul = np.loadtxt(small_dir / "RUL_FD001.txt")
    for site in fed.sites.values():
        for g, unit in enumerate(site.metadata["units"]):
            if unit.startswith("test-"):  # scored at its official cut: the last window, labelled from the RUL file
                row = site.metadata["cut_rows"][g]
                assert row == int(np.nonzero(site.groups.numpy() == g)[0][-1])
                assert site.y[row] == min(rul[int(unit.split("-")[1]) - 1], 125.0)
    frames = operator_frames(cfg, seed=0)
    assert {s: sorted(f["unit"].unique()) for s, f in frames.items()} == \
        {s: sorted(site.metadata["units"]) for s, site in fed.sites.items()}
