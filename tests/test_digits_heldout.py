"""benchmarks/digits_heldout.py: the digits held-out table ends with the vertical JSON line, `auto` row included."""
from __future__ import annotations

import json


def test_the_digits_benchmark_prints_the_vertical_line_with_auto_and_its_paired_rows(tmp_path, monkeypatch) -> None:
    from benchmarks.digits_heldout import BenchConfig, main
    from benchmarks.heldout_common import emit

    monkeypatch.setenv("FML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # the benchmark points it at its temporary store: restored after
    flags = BenchConfig(seeds=[0], rounds=4, draws=1, output_dir=str(tmp_path / "out"),
                        json_out=str(tmp_path / "line.json"))
    emit(main(flags), flags)
    line = json.loads((tmp_path / "line.json").read_text())
    assert line["vertical"] == "digits" and line["headline_metric"] == "accuracy"
    methods = {r["method"] for r in line["rows"] if r["site"] == "ALL"}
    assert {"auto", "fedavg+ft", "fomaml", "maml"} <= methods
    paired = [r for r in line["paired_vs_fedavg_ft"] if r["method"] == "auto" and r["site"] == "ALL"]
    assert {(r["shots"], r["steps"]) for r in paired} == {(k, s) for k in (1, 5) for s in (0, 1, 5, 10)}
    assert line["onboard_seconds"] > 0 and sum(line["auto_choices"].values()) == 10 * 2 * 4
