"""Terminal output that a person reads: `fml models` on a narrow terminal."""
from __future__ import annotations

import io

import pandas as pd
import pytest
from rich.console import Console

import pipelines.console as terminal

MODELS = pd.DataFrame([
    {"name": "fml-fraud", "version": "v3", "alias": "@champion", "headline": "average_precision 0.2504",
     "dataset": "fraud-oracle-d656e1", "fingerprint": "a8d4f4bcad10", "site": ""},
    {"name": "fml-fraud-site-Saab", "version": "v1", "alias": "", "headline": "average_precision 0.2065",
     "dataset": "", "fingerprint": "48247c0514be", "site": "Saab"},
])


def _printed(monkeypatch: pytest.MonkeyPatch, width: int) -> str:
    out = io.StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=out, width=width))
    terminal.print_fitting(MODELS, "Registered models", heading=("name", "version", "alias"))
    return out.getvalue()


def test_a_narrow_terminal_gets_every_value_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 60 columns a table of these cells would cut them ("average_prec…", "0…"): one block per version instead,
    its values never cut or split over two lines, empty cells left out."""
    text = _printed(monkeypatch, 60)
    assert "…" not in text and "┃" not in text
    lines = text.splitlines()
    assert "fml-fraud v3 @champion" in lines and "fml-fraud-site-Saab v1" in lines
    assert all(len(line) <= 60 for line in lines)
    for row in MODELS.to_dict("records"):
        for col, value in row.items():
            if value and col not in ("name", "version", "alias"):
                assert any(f"{col} {value}" in line for line in lines), (col, value)
    assert "dataset  ·" not in text and not any(line.rstrip().endswith("site") for line in lines)


def test_a_wide_terminal_gets_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _printed(monkeypatch, 200)
    assert "┃ name" in text and "…" not in text and "average_precision 0.2504" in text
