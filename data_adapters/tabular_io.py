"""Reading and validating tabular files (CSV/TSV, optionally gzipped, and Parquet).

Every check stops with a :class:`TabularDataError` whose message names the file, the column or the
site, and what to fix: a file that is not what its extension says, empty or duplicate column names,
missing columns (listing those that exist), a label that is not binary, NaN or infinite values.
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

#: Extension -> reader kind. Longest suffix wins (``.csv.gz`` before ``.gz``).
FORMATS = {".csv": "csv", ".csv.gz": "csv", ".tsv": "tsv", ".tsv.gz": "tsv", ".parquet": "parquet", ".pq": "parquet"}

_MAGIC = {
    b"PK\x03\x04": "a ZIP archive (an Excel .xlsx workbook is one)",
    b"\xd0\xcf\x11\xe0": "an old Excel .xls / OLE2 file",
    b"PAR1": "a Parquet file",
    b"\x1f\x8b": "a gzip-compressed file",
    b"%PDF": "a PDF document",
}

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


class TabularDataError(ValueError):
    """A tabular file or column cannot be used as given (the message says what to fix)."""


def file_format(path: Path) -> str:
    """The reader kind of ``path`` from its extension (csv, tsv or parquet)."""
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise TabularDataError(
        f"{path}: unsupported file extension; use one of {', '.join(sorted(FORMATS))}"
    )


def _sniff(head: bytes) -> Optional[str]:
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def check_content_matches_extension(path: Path, kind: str) -> None:
    """Fail when the bytes of ``path`` contradict its extension (e.g. an .xlsx renamed .csv)."""
    with open(path, "rb") as fh:
        head = fh.read(8192)
    if not head:
        raise TabularDataError(f"{path}: the file is empty")
    gz = path.name.lower().endswith(".gz")
    if kind == "parquet":
        if not head.startswith(b"PAR1"):
            seen = _sniff(head) or ("binary data" if b"\0" in head else "text, e.g. CSV")
            raise TabularDataError(
                f"{path}: the extension says Parquet but the file does not start with the Parquet magic bytes "
                f"'PAR1' (it looks like {seen}); convert it or give it its real extension"
            )
        return
    if gz:
        if not head.startswith(b"\x1f\x8b"):
            raise TabularDataError(f"{path}: the extension says gzip but the file is not gzip-compressed; rename it")
        with gzip.open(path, "rb") as fh:
            head = fh.read(8192)
    seen = _sniff(head)
    if seen is not None or b"\0" in head:
        raise TabularDataError(
            f"{path}: the extension says {kind.upper()} text but the file is {seen or 'binary data'}; "
            f"export it as {kind.upper()} (e.g. pandas.read_excel(...).to_csv(...)) or give it its real extension"
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a multi-byte character cut at the sniff boundary
            raise TabularDataError(
                f"{path}: not UTF-8 text (byte {err.start}); re-save the {kind.upper()} as UTF-8"
            ) from None


def _header_names(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return [str(n) for n in pq.read_schema(path).names]
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
        row = next(csv.reader(fh, delimiter="\t" if kind == "tsv" else ","), None)
    if row is None:
        raise TabularDataError(f"{path}: no header row")
    return row


def check_column_names(path: Path, names: Sequence[str]) -> None:
    """Fail on empty or duplicate column names (pandas would silently rename them)."""
    empty = [i + 1 for i, n in enumerate(names) if not str(n).strip()]
    if empty:
        raise TabularDataError(
            f"{path}: column(s) at position {', '.join(map(str, empty))} (1-based) have an empty name; "
            "give every column a name in the header"
        )
    stripped = [str(n).strip() for n in names]
    dupes = sorted({n for n in stripped if stripped.count(n) > 1})
    if dupes:
        where = "; ".join(f"{d!r} at positions {[i + 1 for i, n in enumerate(stripped) if n == d]}" for d in dupes)
        raise TabularDataError(f"{path}: duplicate column names: {where}; column names must be unique")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV (optionally ``.gz``) or Parquet file after checking its content and header."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    kind = file_format(path)
    check_content_matches_extension(path, kind)
    check_column_names(path, _header_names(path, kind))
    try:
        if kind == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", low_memory=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        raise TabularDataError(f"{path}: cannot be read as {kind.upper()}: {err}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise TabularDataError(f"{path}: the file has a header but no rows")
    return df


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str, role: str = "required") -> None:
    """Fail naming the missing columns and listing the columns that exist."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TabularDataError(
            f"{source}: {role} column(s) {missing} not found; the file has columns: {list(df.columns)}"
        )


def _rows(mask: np.ndarray, limit: int = 5) -> str:
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
            f"{source}: label column {name!r} has {int(missing.sum())} missing value(s) at {_rows(missing)}; "
            "label or drop those rows"
        )
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        inf = ~np.isfinite(series.to_numpy(dtype=float))
        if inf.any():
            raise TabularDataError(f"{source}: label column {name!r} has infinite value(s) at {_rows(inf)}")
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
                f"{source}: numeric column {name!r} has non-numeric value(s) {examples} at {_rows(bad.to_numpy())}; "
                "fix them or declare the column categorical"
            )
        values = coerced.to_numpy(dtype=float)
    inf = np.isinf(values)
    if inf.any():
        raise TabularDataError(
            f"{source}: column {name!r} has {int(inf.sum())} infinite value(s) at {_rows(inf)}; replace them"
        )
    nan = np.isnan(values)
    if nan.any() and not allow_missing:
        raise TabularDataError(
            f"{source}: column {name!r} has {int(nan.sum())} missing (NaN) value(s) at {_rows(nan)}; fill them "
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
