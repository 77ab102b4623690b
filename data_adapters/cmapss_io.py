"""Readers of run-to-failure sensor data: NASA C-MAPSS files and a generic long-format fleet table.

Both readers return the same long "fleet frame" (one row per unit and cycle), validated, with the
remaining-useful-life label of every row:

====================  =====================================================================
column                meaning
====================  =====================================================================
``site``              the site (operator / plant / fleet) the unit belongs to (``str``)
``unit``              the unit (engine) id as written in the file
``cycle``             time index of the row (cycles, hours ...), strictly increasing per unit
settings...           operational-setting columns (``setting_1..3`` for C-MAPSS; may be none)
sensors...            sensor columns (``s_1..s_21`` for C-MAPSS)
``rul``               remaining useful life at the row, UNCAPPED (the cap is applied at windowing)
====================  =====================================================================

C-MAPSS (Saxena et al. 2008, "Damage propagation modeling for aircraft engine run-to-failure
simulation"): whitespace-separated text, 26 columns per line: unit, cycle, 3 operational settings,
21 sensors. A ``train_FD00x.txt`` unit runs to failure, so its RUL is ``last cycle - cycle``; a
``test_FD00x.txt`` unit stops before failure and ``RUL_FD00x.txt`` gives, one line per test unit in
unit order, its true RUL at its last cycle, so RUL = that value + ``last cycle - cycle``.

Every problem in the input stops with a :class:`FleetDataError` naming the file, line or column,
unit, and what to fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from data_adapters.sources import read_table

CMAPSS_SETTINGS = [f"setting_{i}" for i in range(1, 4)]
CMAPSS_SENSORS = [f"s_{i}" for i in range(1, 22)]
CMAPSS_COLUMNS = ["unit", "cycle", *CMAPSS_SETTINGS, *CMAPSS_SENSORS]


class FleetDataError(ValueError):
    """Input data that cannot be read as a fleet of run-to-failure units (the message says what to fix)."""


@dataclass
class Fleet:
    """A validated fleet frame plus the names of its column groups.

    Args:
        frame: long table ``site, unit, cycle, settings..., sensors..., rul`` (see module docstring).
        settings: operational-setting columns (used to find operating conditions, not as features).
        sensors: sensor columns (the model's candidate input channels).
        source: where the rows came from (file names; "GENERATED ..." for synthetic data).
        truncated: whether units stop before failure (test files, tables with a target column);
            then the evaluation cut of a unit is its last cycle.
    """

    frame: pd.DataFrame
    settings: list[str]
    sensors: list[str]
    source: str
    truncated: bool = False
    notes: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- C-MAPSS


def _parse_cmapss_lines(path: Path) -> np.ndarray:
    """Parse a C-MAPSS text file into a float64 array ``[rows, 26]`` with line-precise errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give a C-MAPSS train_FD00x.txt / test_FD00x.txt file")
    cells, lines = [], []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(CMAPSS_COLUMNS):
                raise FleetDataError(
                    f"{path}, line {lineno}: {len(parts)} columns, expected {len(CMAPSS_COLUMNS)} (unit, cycle, "
                    "3 operational settings, 21 sensors, separated by whitespace); fix or remove this line"
                )
            cells.append(parts)
            lines.append(lineno)
    if not cells:
        raise FleetDataError(f"{path}: the file holds no data rows")
    text = np.asarray(cells)
    try:
        values = text.astype(np.float64)
    except ValueError:
        values = None
    if values is None or not np.isfinite(values).all():
        for r, row in enumerate(cells):
            for c, cell in enumerate(row):
                try:
                    ok = np.isfinite(float(cell))
                except ValueError:
                    ok = False
                if not ok:
                    raise FleetDataError(
                        f"{path}, line {lines[r]}, column {c + 1} ({CMAPSS_COLUMNS[c]}): {cell!r} is not a finite "
                        "number; every cell of a C-MAPSS file must be numeric"
                    )
    assert values is not None
    for c, name in ((0, "unit"), (1, "cycle")):
        bad = np.nonzero((values[:, c] != np.round(values[:, c])) | (values[:, c] < (1 if c == 0 else 0)))[0]
        if bad.size:
            r = int(bad[0])
            raise FleetDataError(
                f"{path}, line {lines[r]}: {name} {cells[r][c]!r} is not a positive whole number; "
                "column 1 is the unit number and column 2 the cycle"
            )
    return values


def check_unique_cycles(frame: pd.DataFrame, where: str, keys: Sequence[str] = ("site", "unit", "cycle")) -> None:
    """Raise if a (unit, cycle) row appears twice."""
    dup = frame.duplicated(list(keys), keep=False)
    if dup.any():
        row = frame[dup].iloc[0]
        unit = row["unit"].item() if hasattr(row["unit"], "item") else row["unit"]
        count = int(((frame["unit"] == row["unit"]) & (frame["cycle"] == row["cycle"])
                     & (frame["site"] == row["site"])).sum())
        raise FleetDataError(
            f"{where}: unit {unit!r} has {count} rows for cycle {row['cycle']:g}; each (unit, cycle) "
            "must appear once: remove the duplicated rows"
        )


def read_rul_file(path: str | Path) -> np.ndarray:
    """The true RUL at the last cycle of each test unit, one number per line, in unit order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such RUL file; give the RUL_FD00x.txt that goes with the test file")
    values = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 1:
                raise FleetDataError(f"{path}, line {lineno}: {len(parts)} values; a RUL file holds one number "
                                     "per line")
            try:
                v = float(parts[0])
            except ValueError:
                raise FleetDataError(f"{path}, line {lineno}: {parts[0]!r} is not a number") from None
            if not np.isfinite(v) or v < 0:
                raise FleetDataError(f"{path}, line {lineno}: RUL {parts[0]!r} must be a finite number >= 0")
            values.append(v)
    if not values:
        raise FleetDataError(f"{path}: the RUL file is empty")
    return np.asarray(values)


def add_rul_labels(frame: pd.DataFrame, final_rul: Optional[dict] = None) -> pd.DataFrame:
    """Add the uncapped ``rul`` column: ``final RUL of the unit (0 if run to failure) + last cycle - cycle``.

    Args:
        frame: fleet frame with ``site, unit, cycle`` (not modified).
        final_rul: ``{(site, unit): RUL at the unit's last cycle}``; ``None`` = every unit runs to failure.
    """
    out = frame.sort_values(["site", "unit", "cycle"], kind="stable").reset_index(drop=True)
    last = out.groupby(["site", "unit"], sort=False)["cycle"].transform("max")
    rul = last - out["cycle"]
    if final_rul is not None:
        keys = list(zip(out["site"], out["unit"]))
        rul = rul + np.asarray([final_rul[k] for k in keys], dtype=np.float64)
    out["rul"] = rul.astype(np.float64)
    return out


def read_cmapss(path: str | Path, rul_path: Optional[str | Path] = None, site: str = "fleet") -> Fleet:
    """Read one C-MAPSS file (any subset FD001-FD004) into a labelled :class:`Fleet`.

    Args:
        path: ``train_FD00x.txt`` (units run to failure) or ``test_FD00x.txt`` (needs ``rul_path``).
        rul_path: ``RUL_FD00x.txt`` matching a test file: one line per test unit, in unit order.
        site: value of the ``site`` column.
    """
    path = Path(path)
    values = _parse_cmapss_lines(path)
    frame = pd.DataFrame(values, columns=CMAPSS_COLUMNS)
    frame["unit"] = frame["unit"].astype(np.int64)
    frame.insert(0, "site", site)
    check_unique_cycles(frame, str(path))
    if rul_path is None and path.name.lower().startswith("test_"):
        raise FleetDataError(
            f"{path}: a C-MAPSS test file stops before failure, so its labels need the matching RUL file: "
            "give --rul RUL_FD00x.txt (data config field rul_path)"
        )
    final = None
    if rul_path is not None:
        rul = read_rul_file(rul_path)
        units = np.sort(frame["unit"].unique())
        if rul.size != units.size:
            raise FleetDataError(
                f"{rul_path}: {rul.size} RUL values but {path} has {units.size} units; the RUL file must hold one "
                "line per test unit, in unit order (check that both files are the same subset FD00x)"
            )
        final = {(site, int(u)): float(r) for u, r in zip(units, rul)}
    frame = add_rul_labels(frame, final)
    src = f"{path.name}" + (f" + {Path(rul_path).name}" if rul_path is not None else "")
    return Fleet(frame, list(CMAPSS_SETTINGS), list(CMAPSS_SENSORS), src, truncated=rul_path is not None)


# ------------------------------------------------------------------------------------ generic table


@dataclass
class TableColumns:
    """Column names of a generic long-format fleet table (CSV or Parquet)."""

    site_column: str = "site"
    """Site (operator / plant) column; if absent from the file, every row is one site named after the file."""
    unit_column: str = "unit"
    """Unit (machine) id column."""
    time_column: str = "time"
    """Time column (cycles, hours ...): strictly increasing per unit after sorting."""
    target_column: str = "rul"
    """RUL column; if absent from the file, units are taken as run to failure (RUL = last time - time)."""
    sensor_columns: list[str] = field(default_factory=list)
    """Sensor columns; empty = every column that is not site/unit/time/target/settings (all must be numeric)."""
    setting_columns: list[str] = field(default_factory=list)
    """Operational-setting columns used to find operating conditions (not model inputs)."""


def _where(path: Path, i: int) -> str:
    """Data row ``i`` (0-based) as a reader finds it: the file line of a CSV/TSV, else the table row."""
    if path.suffix.lower() in (".parquet", ".pq"):
        return f"row {i}"
    return f"line {i + 2}"  # the header is line 1


_SENSOR_HINT = "fill or remove missing / non-numeric cells (or list the sensor columns in sensor_columns to leave this one out)"


def _numeric_column(raw: pd.DataFrame, column: str, path: Path, hint: str = _SENSOR_HINT) -> pd.Series:
    col = raw[column]
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() | ~np.isfinite(num.astype(np.float64))
    if bad.any():
        i = int(np.nonzero(bad.to_numpy())[0][0])
        cell = "empty" if pd.isna(col.iloc[i]) else f"{col.iloc[i]!r} is not a finite number"
        raise FleetDataError(f"{path}, {_where(path, i)}, column {column!r}: {cell} ({int(bad.sum())} such cell(s)); "
                             f"{hint}")
    return num.astype(np.float64)


def read_fleet_table(path: str | Path, columns: TableColumns) -> Fleet:
    """Read a long-format table ``site, unit, time, sensors..., target`` into a labelled :class:`Fleet`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give a CSV or Parquet fleet table")
    raw = read_table(path, error=FleetDataError)
    for need in (columns.unit_column, columns.time_column, *columns.sensor_columns, *columns.setting_columns):
        if need not in raw.columns:
            raise FleetDataError(
                f"{path}: missing column {need!r}; columns are {list(raw.columns)} (set the *_column fields of the "
                "data config to your names)"
            )
    reserved = {columns.site_column, columns.unit_column, columns.time_column, columns.target_column,
                *columns.setting_columns}
    sensors = list(columns.sensor_columns) or [c for c in raw.columns if c not in reserved]
    if not sensors:
        raise FleetDataError(f"{path}: no sensor columns besides site/unit/time/target; list them in sensor_columns")
    frame = pd.DataFrame({
        "site": raw[columns.site_column].astype(str) if columns.site_column in raw.columns else path.stem,
        "unit": raw[columns.unit_column].astype(str),
        "cycle": _numeric_column(raw, columns.time_column, path),
    })
    settings = [f"setting:{c}" for c in columns.setting_columns]
    for name, col in zip(settings, columns.setting_columns):
        frame[name] = _numeric_column(raw, col, path)
    for col in sensors:
        frame[col] = _numeric_column(raw, col, path)
    check_unique_cycles(frame, str(path))
    truncated = columns.target_column in raw.columns
    if not truncated:
        return Fleet(add_rul_labels(frame), settings, sensors, path.name, truncated=False)
    target = _numeric_column(raw, columns.target_column, path,
                             hint="every row needs its remaining useful life; fill the cells or drop the rows")
    if (target < 0).any():
        i = int(np.nonzero((target < 0).to_numpy())[0][0])
        raise FleetDataError(f"{path}, {_where(path, i)}, column {columns.target_column!r}: RUL {target.iloc[i]:g} is "
                             f"negative ({int((target < 0).sum())} such cell(s)); RUL must be >= 0: fix the labels")
    frame["rul"] = target
    labelled = frame.sort_values(["site", "unit", "cycle"], kind="stable").reset_index(drop=True)
    return Fleet(labelled, settings, sensors, path.name, truncated=True)


def read_fleet(path: str | Path, rul_path: Optional[str | Path], columns: TableColumns, site: str = "fleet") -> Fleet:
    """Read either format: ``.csv``/``.tsv``/``.parquet`` = generic table, anything else = a C-MAPSS text file."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet", ".pq"):
        if rul_path is not None:
            raise FleetDataError(f"{path}: a RUL file goes with C-MAPSS test files; a table carries its target column")
        return read_fleet_table(path, columns)
    return read_cmapss(path, rul_path, site=site)
