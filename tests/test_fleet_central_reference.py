"""benchmarks/fleet_central_reference.py: the maintenance architecture trained centrally, scored on the new fleet
exactly where onboarding scores it (generated C-MAPSS files; no shared data needed)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fleet_central_reference import Flags, fleet_rmse  # noqa: E402

SMALL = ["data.include_test_file=false", "data.window=12", "data.stride=2", "data.units_per_site=4",
         "data.validation_sites=1", "data.test_sites=1", "data.channels=4", "data.hidden=8",
         "data.windows_per_unit=8", "data.support_windows=8"]


@pytest.fixture
def fleet_dir(small_cmapss_dir: Path) -> Path:
    return small_cmapss_dir


def test_the_central_fit_scores_the_fleet_without_the_onboarding_support(fleet_dir: Path) -> None:
    import verticals

    verticals.load_all()
    flags = Flags(preset="quick", seeds=[0], set=[f"data.data_dir={fleet_dir}", *SMALL], shots=2)
    result = fleet_rmse(flags, 0)
    assert result["fleet"].startswith("official test_FD001.txt")
    assert result["scored_units"] == 8 - 2  # the fleet's 8 engines but the 2 onboarding adapts on
    assert result["train_operators"] == 4 and result["train_units"] == 16  # 24 engines: 6 operators, 1 val, 1 test
    assert math.isfinite(result["rmse_last"]) and result["lr"] in (3e-4, 1e-3)
    assert result["rmse_last"] < 0.8 * result["rmse_last_at_init"]  # a real fit, scored with the fitted weights
    again = fleet_rmse(flags, 0)
    assert (again["rmse_last"], again["lr"], again["step"]) == (result["rmse_last"], result["lr"], result["step"])


def test_a_fleet_inside_the_operators_is_refused(fleet_dir: Path) -> None:
    import verticals

    verticals.load_all()
    flags = Flags(preset="quick", seeds=[0], set=[f"data.data_dir={fleet_dir}", *SMALL, "data.include_test_file=true"])
    with pytest.raises(SystemExit, match="data.include_test_file=false"):
        fleet_rmse(flags, 0)
