"""``benchmarks/gpu_check.py`` on a machine without a GPU: the CPU side runs, the GPU side is reported as
skipped, and the difference measures and the TF32 switch it reports are what they say."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.gpu_check import Config, main, max_abs_diff, max_rel_diff


def test_differences_are_per_tensor_and_relative_to_its_largest_cpu_entry() -> None:
    cpu = {"w": torch.tensor([1.0, -4.0]), "b": torch.tensor([0.01, 0.0])}
    gpu = {"w": torch.tensor([1.0, -3.0]), "b": torch.tensor([0.02, 0.0])}
    assert max_abs_diff(cpu, gpu) == pytest.approx(1.0)
    assert max_rel_diff(cpu, gpu) == pytest.approx(1.0)  # b: 0.01 off its largest entry 0.01, w: 1 / 4
    assert max_rel_diff(cpu, cpu) == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")
def test_without_a_gpu_the_cpu_side_runs_and_tf32_is_recorded(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # restored after the test
    out = main(Config(r1_clients=[2], r1_algorithms=["fomaml"], imaging_px=[], rounds=1, warmup=0, threads=1,
                      tf32=False))
    assert torch.backends.cudnn.allow_tf32 is False
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["gpu"] is None and "--device cuda" in out["gpu_skipped"] and out["tf32"] is False
    (row,) = out["results"]
    assert row["cpu_ms"] > 0 and row["gpu_ms"] is None and row["max_rel_diff"] is None
