"""Shared fixtures. Tests run single-threaded torch: CPU oversubscription (parallel helpers, Flower
subprocesses) makes multi-threaded OpenMP kernels spin and run 10x slower."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TEST_THREADS = int(os.environ.get("FML_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real datasets: ``$FML_DATA_DIR`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("FML_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _pinned_threads():
    """Every test starts with TEST_THREADS torch threads, whatever an earlier test set (a vertical's
    prepare() may set threads process-wide)."""
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture
def fml_home(tmp_path, monkeypatch) -> Path:
    """An isolated embedded MLflow store for one test."""
    home = tmp_path / "fml-home"
    monkeypatch.setenv("FML_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def small_cmapss_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GENERATED C-MAPSS FD001 folder (24 train engines, 8 test engines + RUL file) for maintenance tests."""
    from data_adapters.cmapss_sim import generate_cmapss, write_cmapss_files

    folder = tmp_path_factory.mktemp("cmapss_small")
    train, test, rul = generate_cmapss(24, 8, seed=11, min_life=45, max_life=80)
    write_cmapss_files(folder, "FD001", train, test, rul)
    return folder
