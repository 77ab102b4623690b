"""Every held-out benchmark's JSON line says which machine, kernels and commit measured it."""
from __future__ import annotations

import json
import re

import torch

from benchmarks.heldout_common import HeldoutFlags, emit
from benchmarks.provenance import machine


def test_the_json_line_records_the_machine_and_the_commit(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    path = tmp_path / "out.json"
    emit({"vertical": "sine", "rows": []}, HeldoutFlags(json_out=str(path)))
    line = json.loads(path.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == line
    seen = line["machine"]
    assert line["vertical"] == "sine" and seen["torch"] == torch.__version__
    assert seen["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and seen["cpu"]
    assert seen["kernel_env"]["MKL_CBWR"] == "COMPATIBLE"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", seen["commit"])  # the test runs in the project's clone


def test_outside_git_the_commit_is_empty(monkeypatch, tmp_path) -> None:
    import benchmarks.provenance as provenance

    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert machine()["commit"] == ""
