"""The one table reader of the data adapters: CSV/TSV (optionally gzipped) and Parquet files.

Before pandas parses a file, :func:`read_table` checks that its bytes match its extension (an Excel
workbook renamed ``.csv`` is named as such), that the header's column names are non-empty and unique
(pandas would silently rename them), and that there are rows. Every problem raises the caller's error
class (tabular, fleet or manifest data) with a message naming the file and what to fix.
"""
from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Optional, Sequence

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


def read_table(path: str | Path, *, text: bool = False, error: type[ValueError] = TabularDataError) -> pd.DataFrame:
    """Read a CSV/TSV (optionally ``.gz``) or Parquet file after checking its content and header.

    Args:
        path: the file; its extension chooses the parser (:data:`FORMATS`).
        text: every cell as a string, empty cells as ``""`` (manifests of file names and labels).
        error: the error class raised for a file that cannot be used (the adapter's own).

    Raises:
        FileNotFoundError: no such file.
        error: wrong content for the extension, empty or duplicate column names, unparsable, no rows.
    """
    try:
        return _read_table(Path(path), text)
    except TabularDataError as err:
        if error is TabularDataError:
            raise
        raise error(str(err)) from None


def _read_table(path: Path, text: bool) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    kind = file_format(path)
    check_content_matches_extension(path, kind)
    check_column_names(path, _header_names(path, kind))
    as_text = {"dtype": str, "keep_default_na": False} if text else {}
    try:
        if kind == "parquet":
            df = pd.read_parquet(path)
            df = df.astype(str) if text else df
        else:
            df = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", low_memory=False, encoding="utf-8-sig",
                             **as_text)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        raise TabularDataError(f"{path}: cannot be read as {kind.upper()}: {err}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise TabularDataError(f"{path}: the file has a header but no rows")
    return df
