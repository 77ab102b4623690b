"""Where a benchmark's figures were measured: the machine, the numeric libraries and the commit.

Recorded in every held-out benchmark's JSON line (``machine``) because the full presets' rows are
reproducible per machine, not across CPUs: MKL and ATen pick their kernels per instruction set, and a
thousand FedAvg rounds turn last-bit differences into another model (verticals/README, "Reproducing the
tables on another machine"). Compare this field before reading a rerun's difference as a regression.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Environment variables that change which kernels the numeric libraries run.
KERNEL_VARIABLES = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    """``git describe``-like: the commit hash, ``+dirty`` when tracked files differ from it ('' outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


#: The commit when the benchmark started (imported at its start): later commits while it runs do not count.
COMMIT_AT_START = commit()


def machine() -> dict[str, Any]:
    """The ``machine`` field of a benchmark's JSON line (``commit``: the one the benchmark started from; ``gpu``
    and ``cuda`` where a GPU is visible, whether or not the run's ``--device`` used it)."""
    import torch

    gpu = {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda} if torch.cuda.is_available() else {}
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl": torch.backends.mkl.is_available(),
            "threads": torch.get_num_threads(), "python": platform.python_version(), "commit": COMMIT_AT_START,
            "kernel_env": {k: os.environ[k] for k in KERNEL_VARIABLES if k in os.environ}, **gpu}


__all__ = ["commit", "cpu_model", "machine"]
