"""Bad data files stop with ONE line that names the file, the column or array, where, and what to fix:
NaN images in a MedMNIST .npz, empty site cells in a tabular file, empty or negative RUL in a fleet table
or a C-MAPSS RUL file. Every file is GENERATED into tmp_path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _fraud_testdata import COLUMNS, ROLES, make_transactions
from data_adapters.cmapss_io import FleetDataError, TableColumns, read_fleet_table, read_rul_file
from data_adapters.medmnist import ImageDataError, load_medmnist
from data_adapters.tabular import TabularData, build_tabular_federation
from data_adapters.tabular_io import TabularDataError
from imaging_files import write_npz


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_nan_pixels_in_a_medmnist_file_name_the_array_and_images(tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((12, 8, 8)).astype(np.float32)
    images[3, 2, 2] = np.nan
    images[7, 0, 1] = np.inf
    path = write_npz(tmp_path / "scans.npz", n=12, val_images=images)
    with pytest.raises(ImageDataError) as err:
        load_medmnist(path)
    text = one_line(err)
    assert str(path) in text and "val_images" in text
    assert "2 image(s), first indices [3, 7]" in text and "drop the images (with their val_labels)" in text
    assert load_medmnist(path, splits=["train"]).x.shape[0] == 12  # the clean split alone still reads


def test_empty_site_cells_in_a_tabular_file_name_the_column_and_rows(tmp_path: Path) -> None:
    frame = make_transactions(0)
    column = COLUMNS["site_column"]
    frame[column] = frame[column].astype(object)
    frame.loc[[4, 9], column] = None  # empty cells in the CSV
    frame.loc[11, column] = "   "  # blank is empty too
    path = tmp_path / "claims.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(TabularDataError) as err:
        build_tabular_federation(TabularData(**{**COLUMNS, **ROLES}), path, seed=0)
    text = one_line(err)
    assert str(path) in text and f"site column {column!r}" in text
    assert "data rows 5, 10, 12 (1-based, header excluded)" in text and "fill the cells or drop the rows" in text


def _fleet(tmp_path: Path, rul: list, suffix: str = ".csv") -> Path:
    df = pd.DataFrame({"site": ["a"] * 4, "unit": [1, 1, 2, 2], "time": [1, 2, 1, 2], "temp": [1.0, 2.0, 3.0, 4.0],
                       "rul": rul})
    path = tmp_path / f"fleet{suffix}"
    df.to_parquet(path) if suffix == ".parquet" else df.to_csv(path, index=False)
    return path


def test_empty_rul_cell_in_a_fleet_table_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(FleetDataError) as err:
        read_fleet_table(_fleet(tmp_path, [5, 4, None, 7]), TableColumns())
    text = one_line(err)
    assert "fleet.csv, line 4, column 'rul': empty (1 such cell(s))" in text
    assert "every row needs its remaining useful life" in text and "sensor_columns" not in text


def test_negative_rul_in_a_fleet_table_names_the_line_or_row(tmp_path: Path) -> None:
    with pytest.raises(FleetDataError) as err:
        read_fleet_table(_fleet(tmp_path, [5, -2, 8, -1]), TableColumns())
    assert "fleet.csv, line 3, column 'rul': RUL -2 is negative (2 such cell(s)); RUL must be >= 0" in one_line(err)
    with pytest.raises(FleetDataError, match=r"fleet\.parquet, row 1, column 'rul': RUL -2 is negative"):
        read_fleet_table(_fleet(tmp_path, [5, -2, 8, 7], ".parquet"), TableColumns())


def test_negative_or_missing_values_in_a_cmapss_rul_file(tmp_path: Path) -> None:
    bad = tmp_path / "RUL_FD001.txt"
    bad.write_text("112\n-3\n69\n")
    with pytest.raises(FleetDataError) as err:
        read_rul_file(bad)
    assert f"{bad}, line 2: RUL '-3' must be a finite number >= 0" in one_line(err)
    empty = tmp_path / "RUL_empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(FleetDataError, match=r"RUL_empty\.txt: the RUL file is empty"):
        read_rul_file(empty)
