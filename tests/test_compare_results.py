"""benchmarks/compare_results.py compares the pooled rows (or the one pool asked for), never a site's by accident."""
from __future__ import annotations

import json

import pytest

from benchmarks.compare_results import Config, main


def line(rows: list[tuple[str, str, float]], column: str) -> str:
    return json.dumps({"rows": [{"method": m, "shots": 1, "steps": 5, column: pool, "mean": v} for m, pool, v in rows]})


@pytest.mark.parametrize("column, everything", [("site", "ALL"), ("robots", "all"), ("clinics", "all")])
def test_the_pooled_rows_are_compared_whatever_their_order(tmp_path, column, everything) -> None:
    # the pooled row first, a site's last: a dict keyed without the pool would keep the site's
    (tmp_path / "a.json").write_text(line([("fomaml", everything, 0.5), ("fomaml", "Saab", 0.1)], column))
    (tmp_path / "b.json").write_text("progress\n" + line([("fomaml", everything, 0.7), ("fomaml", "Saab", 0.9)], column))
    table = main(Config(tmp_path / "a.json", tmp_path / "b.json"))
    assert "| fomaml | 0.500, 0.700, +0.200 |" in table
    table = main(Config(tmp_path / "a.json", tmp_path / "b.json", pool="Saab"))
    assert "| fomaml | 0.100, 0.900, +0.800 |" in table
    with pytest.raises(SystemExit, match="no rows pooled as 'Ford'"):
        main(Config(tmp_path / "a.json", tmp_path / "b.json", pool="Ford"))


def test_a_method_only_one_run_has_is_left_out(tmp_path) -> None:
    (tmp_path / "a.json").write_text(line([("fomaml", "ALL", 0.5), ("ensemble", "ALL", 0.6)], "site"))
    (tmp_path / "b.json").write_text(line([("fomaml", "ALL", 0.7)], "site"))
    table = main(Config(tmp_path / "a.json", tmp_path / "b.json"))
    assert "| fomaml | 0.500, 0.700, +0.200 |" in table and "ensemble" not in table


def test_the_scale_page_holds_the_table_of_the_committed_results() -> None:
    from tests.conftest import REPO_ROOT

    results = REPO_ROOT / "benchmarks" / "results"
    table = main(Config(results / "fraud_full.json", results / "fraud_full_diversity_quality.json", steps=5))
    page = (REPO_ROOT / "core" / "scale.md").read_text()
    assert "\n".join("    " + row for row in table.splitlines()) in page, \
        "regenerate the table of core/scale.md with the compare_results.py command it names"
