"""Shared by the test modules that start real Flower processes (SuperLink, SuperNodes, ``flwr``)."""
from __future__ import annotations

import pytest


def require_flower_executables() -> None:
    """Skip the calling test module (with the reason) unless Flower's executables are installed."""
    from pipelines.federate import flower_bin

    try:
        for exe in ("flower-superlink", "flower-supernode", "flwr"):
            flower_bin(exe)
    except FileNotFoundError as err:  # pragma: no cover
        pytest.skip(f"Flower executables missing: {err}", allow_module_level=True)
