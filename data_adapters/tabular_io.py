"""Validating the columns of a tabular file (read by :func:`data_adapters.tables.read_table`).

Every check stops with a :class:`TabularDataError` whose message names the file, the column or the
site, and what to fix: missing columns (listing those that exist), a label that is not binary, NaN or
infinite values, rows without a site.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from data_adapters.tables import TabularDataError

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str, role: str = "required") -> None:
    """Fail naming the missing columns and listing the columns that exist."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TabularDataError(
            f"{source}: {role} column(s) {missing} not found; the file has columns: {list(df.columns)}"
        )


def rows_at(mask: np.ndarray, limit: int = 5) -> str:
    """The first ``limit`` rows where ``mask`` holds, as a message names them (1-based data rows)."""
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i + 1) for i in idx[:limit])
    return f"data rows {shown}{' ...' if idx.size > limit else ''} (1-based, header excluded)"


def binary_labels(series: pd.Series, source: str, positive_label: Optional[str] = None) -> np.ndarray:
    """The label column as int64 0/1; fails on missing/infinite values or more than two classes.

    Args:
        series: the raw label column.
        source: file name for messages.
        positive_label: the value meaning "positive" when the label is not already 0/1 or true/false.
    """
    name = series.name
    missing = series.isna().to_numpy()
    if missing.any():
        raise TabularDataError(
            f"{source}: label column {name!r} has {int(missing.sum())} missing value(s) at {rows_at(missing)}; "
            "label or drop those rows"
        )
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        inf = ~np.isfinite(series.to_numpy(dtype=float))
        if inf.any():
            raise TabularDataError(f"{source}: label column {name!r} has infinite value(s) at {rows_at(inf)}")
    text = series.astype(str).str.strip()
    values = sorted(text.unique().tolist())
    if positive_label is not None:
        if len(values) > 2 or str(positive_label) not in values:
            raise TabularDataError(
                f"{source}: label column {name!r} must hold two values including positive_label "
                f"{positive_label!r}; found {values[:10]} ({len(values)} distinct)"
            )
        return (text == str(positive_label)).to_numpy().astype(np.int64)
    lower = text.str.lower()
    ok = lower.isin(_TRUE | _FALSE)
    if not ok.all():
        raise TabularDataError(
            f"{source}: label column {name!r} must be binary (0/1 or true/false); found values "
            f"{values[:10]} ({len(values)} distinct). Give positive_label to map a two-valued label, "
            "or choose another label column"
        )
    return lower.isin(_TRUE).to_numpy().astype(np.int64)


def numeric_column(series: pd.Series, source: str, allow_missing: bool) -> np.ndarray:
    """A numeric feature column as float64 (NaN = missing); fails on text and infinite values."""
    name = series.name
    if pd.api.types.is_bool_dtype(series):
        values = series.astype(float).to_numpy()
    else:
        coerced = pd.to_numeric(series, errors="coerce")
        bad = coerced.isna() & series.notna()
        if bad.any():
            examples = series[bad].astype(str).unique()[:5].tolist()
            raise TabularDataError(
                f"{source}: numeric column {name!r} has non-numeric value(s) {examples} at {rows_at(bad.to_numpy())}; "
                "fix them or declare the column categorical"
            )
        values = coerced.to_numpy(dtype=float)
    inf = np.isinf(values)
    if inf.any():
        raise TabularDataError(
            f"{source}: column {name!r} has {int(inf.sum())} infinite value(s) at {rows_at(inf)}; replace them"
        )
    nan = np.isnan(values)
    if nan.any() and not allow_missing:
        raise TabularDataError(
            f"{source}: column {name!r} has {int(nan.sum())} missing (NaN) value(s) at {rows_at(nan)}; fill them "
            "or set allow_missing to encode them (mean fill + missing indicator)"
        )
    return values


def category_strings(series: pd.Series) -> pd.Series:
    """Categories as strings (``3.0`` -> ``"3"``), missing values kept as NaN."""

    def one(v):
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()

    out = series.astype(object).map(lambda v: None if pd.isna(v) else one(v))
    return out
