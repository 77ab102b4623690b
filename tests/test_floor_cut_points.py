"""benchmarks/floor_cut_points.py: the oracle floor at the simulated run's cuts IS the pipeline's oracle row, and a
no-simulation build of the same seed scores the same engines at other windows (generated C-MAPSS files)."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from floor_cut_points import Flags, floors  # noqa: E402

SMALL = ["data.window=12", "data.stride=2", "data.units_per_site=4", "data.validation_sites=1", "data.test_sites=1",
         "data.channels=4", "data.hidden=8", "data.windows_per_unit=8", "data.support_windows=8", "eval.shots=[1]",
         "eval.draws=2"]


@pytest.fixture
def train_file(small_cmapss_dir: Path) -> Path:
    return small_cmapss_dir / "train_FD001.txt"


def test_the_floor_at_the_simulated_cuts_is_the_oracle_row_and_the_other_cuts_differ(train_file: Path) -> None:
    import dataclasses

    import verticals
    from core.vertical import VERTICALS
    from heldout_common import with_overrides
    from pipelines.config import load_preset
    from verticals.maintenance.reference import METHOD, reference_baselines

    verticals.load_all()
    flags = Flags(preset="quick", seeds=[0], set=[f"data.path={train_file}", *SMALL])
    result = floors(flags, 0)
    spec = VERTICALS.get("maintenance")
    run_cfg = with_overrides(load_preset(spec, "quick"), flags.set)
    problem = spec.build(run_cfg.data, 0)
    rows = reference_baselines(problem, SimpleNamespace(data=run_cfg.data, seed=0, eval=run_cfg.eval),
                               problem.federation.role("test"))
    oracle = rows[(rows["method"] == METHOD) & (rows["metric"] == "rmse_last")]["value"].mean()
    assert result["simulated_cuts"]["1"] == pytest.approx(oracle, abs=1e-3)  # the committed row's own windows
    plain = spec.build(dataclasses.replace(run_cfg.data, simulate=False), 0)
    test_site = problem.federation.role("test")[0].site_id
    assert problem.federation.sites[test_site].metadata["cut_rows"] != plain.federation.sites[test_site].metadata["cut_rows"]
    assert result["no_simulation_cuts"]["1"] != result["simulated_cuts"]["1"]
