"""Every held-out benchmark's JSON line says which machine, kernels and commit measured it."""
from __future__ import annotations

import json
import re

import pytest
import torch

from benchmarks.heldout_common import HeldoutFlags, emit, parse_flags
from benchmarks.provenance import machine


def test_the_json_line_records_the_machine_and_the_commit(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    path = tmp_path / "out.json"
    emit({"vertical": "sine", "rows": []}, HeldoutFlags(json_out=str(path)))
    line = json.loads(path.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == line
    seen = line["machine"]
    assert line["vertical"] == "sine" and seen["torch"] == torch.__version__ and line["command"].startswith("python ")
    assert seen["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and seen["cpu"]
    assert seen["kernel_env"]["MKL_CBWR"] == "COMPATIBLE"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", seen["commit"])  # the test runs in the project's clone


def test_outside_git_the_commit_is_empty(monkeypatch, tmp_path) -> None:
    import benchmarks.provenance as provenance

    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert provenance.commit() == ""


def test_regenerate_replays_a_recorded_command_and_rebuilds_an_older_one(tmp_path) -> None:
    from benchmarks.regenerate import REPO, command_of

    path = REPO / "benchmarks" / "results" / "toy.json"
    recorded = {"command": "python benchmarks/maintenance_heldout.py --preset full --onboard-shots 5 --json-out elsewhere.json"}
    argv = command_of(path, recorded)
    assert argv[1:] == ["benchmarks/maintenance_heldout.py", "--preset", "full", "--onboard-shots", "5",
                        "--output-dir", "fml-output/regenerate/toy", "--json-out", "benchmarks/results/toy.json"]
    older = {"vertical": "medical_imaging", "preset": "quick", "seeds": [0, 1], "overrides": ["data.site_statistics=true"]}
    assert command_of(path, older)[1:] == ["benchmarks/imaging_heldout.py", "--preset", "quick", "--seeds", "0", "1",
                                           "--set", "data.site_statistics=true", "--output-dir", "fml-output/regenerate/toy",
                                           "--json-out", "benchmarks/results/toy.json"]
    assert command_of(path, {"workload": "r1"}) is None  # not a held-out benchmark's line


def test_regenerate_runs_a_line_with_the_torch_threads_it_records() -> None:
    """imaging_quick.json was measured with two threads and reproduces only with two (checked 2026-12-06)."""
    from benchmarks.regenerate import RESULTS, closing_line, threads_of

    assert threads_of({"machine": {"threads": 2}}) == 2 and threads_of({}) == 1
    assert threads_of(closing_line(RESULTS / "imaging_quick.json")) == 2
    assert threads_of(closing_line(RESULTS / "fraud_full.json")) == 1


def test_every_committed_vertical_line_has_a_command() -> None:
    from benchmarks.regenerate import RESULTS, SCRIPTS, closing_line, command_of

    lines = {p.name: closing_line(p) for p in RESULTS.glob("*.json")}
    held_out = {name: line for name, line in lines.items()
                if line and line.get("vertical") in SCRIPTS and "benchmark" not in line}
    assert len(held_out) >= 20 and "digits_quick.json" in held_out
    assert all(command_of(RESULTS / name, line) for name, line in held_out.items())
    # another script's line about a vertical (fml tune's report) is replayed by its own command, never rebuilt as a
    # held-out benchmark's
    tune = RESULTS / "tune_report_digits_quick.json"
    assert command_of(tune, lines[tune.name])[1] == "benchmarks/tune_report.py"
    assert command_of(tune, {"benchmark": "tune_report", "vertical": "digits", "preset": "quick"}) is None


def test_every_committed_held_out_line_is_scored_as_onboarding_gives_it() -> None:
    """The tables read as what `fml onboard` gives only if no committed line turned the divergence guard off
    (experiment records under experiments/ keep the protocol of their day and are not checked)."""
    from benchmarks.regenerate import RESULTS, SCRIPTS, closing_line

    lines = {p.name: closing_line(p) for p in RESULTS.glob("*.json")}
    held_out = {name: line for name, line in lines.items()
                if line and line.get("vertical") in SCRIPTS and "benchmark" not in line}
    unguarded = sorted(name for name, line in held_out.items()
                       if "eval.guard=false" in (line.get("command") or "")
                       or "eval.guard=false" in (line.get("overrides") or []))
    assert unguarded == [], f"committed lines scored without the guard: {unguarded}"


def test_the_machine_names_a_visible_gpu(monkeypatch) -> None:
    assert "gpu" not in machine() or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    seen = machine()
    assert seen["gpu"] == "NVIDIA H200" and seen["cuda"] == torch.version.cuda


def test_every_override_after_one_set_applies_and_a_repeated_set_is_refused() -> None:
    """tyro keeps only the last ``--set``: a second one would silently drop the first's overrides."""
    flags = parse_flags(HeldoutFlags, ["--set", "data.simulate=false", "eval.checkpoint_metric=rmse_all"])
    assert flags.set == ["data.simulate=false", "eval.checkpoint_metric=rmse_all"]
    with pytest.raises(SystemExit, match="--set is given more than once"):
        parse_flags(HeldoutFlags, ["--set", "data.simulate=false", "--set", "eval.checkpoint_metric=rmse_all"])
