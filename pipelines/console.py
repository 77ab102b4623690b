"""Terminal output: rich tables and progress bars."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# Not a terminal (CI logs, pipes): wide enough that tables keep whole names.
console = Console(width=None if sys.stdout.isatty() else 160)


def print_frame(df: pd.DataFrame, title: str, max_rows: int = 40) -> None:
    """``df`` as a table (a narrow terminal wraps its cells)."""
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col))
    for _, row in df.head(max_rows).iterrows():
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.tolist()])
    console.print(table)
    if len(df) > max_rows:
        console.print(f"... {len(df) - max_rows} more rows in the CSV")


def print_fitting(df: pd.DataFrame, title: str, heading: tuple[str, ...]) -> None:
    """``df`` as a table where the terminal shows every cell whole; on a narrower one (rich would cut a value
    to "0…"), one block per row: its ``heading`` columns on one line, then its other non-empty cells as
    ``column value`` pairs, wrapped whole."""
    cells = df.astype(str)
    widths = [max([len(str(col)), *cells[col].str.len()]) for col in cells.columns]
    if sum(widths) + 3 * len(widths) + 1 <= console.width:  # each cell padded by one space, and its border
        table = Table(title=title)
        for col in cells.columns:
            table.add_column(str(col), no_wrap=True)
        for row in cells.itertuples(index=False):
            table.add_row(*row)
        console.print(table)
        return
    console.print(Text(title, style="bold"))
    for _, row in cells.iterrows():
        console.print(Text(" ".join(row[c] for c in heading if row[c]), style="bold"))
        line = ""
        for pair in (f"{col} {row[col]}" for col in cells.columns if col not in heading and row[col]):
            if line and len(line) + 5 + len(pair) > console.width:  # a pair is never split over two lines
                console.print(Text(line), overflow="fold")
                line = ""
            line = f"{line}  ·  {pair}" if line else f"  {pair}"
        if line:
            console.print(Text(line), overflow="fold")


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=not enabled)
    with bar:
        yield bar
