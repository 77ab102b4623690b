"""Terminal output: rich tables and progress bars."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Not a terminal (CI logs, pipes): wide enough that tables keep whole names.
console = Console(width=None if sys.stdout.isatty() else 160)


def print_frame(df: pd.DataFrame, title: str, max_rows: int = 40, whole: tuple[str, ...] = ()) -> None:
    """``df`` as a table; the ``whole`` columns are never shortened (narrow terminals shrink the others)."""
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        width = int(df[col].astype(str).str.len().max()) if col in whole and len(df) else None
        table.add_column(str(col), no_wrap=col in whole, min_width=width)
    for _, row in df.head(max_rows).iterrows():
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.tolist()])
    console.print(table)
    if len(df) > max_rows:
        console.print(f"... {len(df) - max_rows} more rows in the CSV")


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=not enabled)
    with bar:
        yield bar
