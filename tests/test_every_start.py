"""benchmarks/every_start.py: the per-site choice among EVERY trained start, from a finished run's folder."""
from __future__ import annotations

import copy

import pytest

from core.config import RunConfig

pytestmark = pytest.mark.slow  # one short sine run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("FML_HOME", str(tmp_path_factory.mktemp("fml-home")))
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import verticals
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.run import run_pipeline

    verticals.load_all()
    spec = VERTICALS.get("sine")
    cfg: RunConfig = load_preset(spec, "quick")
    cfg.algorithms = ["fomaml", "reptile", "maml"]  # the bundle keeps at most three starts of four
    cfg.output_dir = str(tmp_path_factory.mktemp("sine") / "seed0")
    result = run_pipeline(spec, cfg, progress=False)
    yield spec, cfg, result
    patch.undo()


def test_the_bundle_reproduces_the_runs_auto_rows_and_every_start_adds_the_rest(finished) -> None:
    from benchmarks.every_start import EVERY, seed_rows

    spec, cfg, result = finished
    rows, facts = seed_rows(spec, cfg, result.output_dir)
    # the bundle's choice, derived from the evidence of the choice among every start, is the run's auto, draw for draw
    assert facts["bundle_choices_differing_from_the_run"] == 0 and facts["draws"] > 0
    run_auto = result.output_dir / "evaluation_rows.parquet"
    import pandas as pd

    keys = ["site", "shots", "steps", "draw", "metric"]
    theirs = pd.read_parquet(run_auto).query("method == 'auto'").set_index(keys)["value"].sort_index()
    ours = rows[rows["method"] == "auto"].set_index(keys)["value"].sort_index()
    pd.testing.assert_series_equal(theirs, ours)
    assert set(facts["every"]) == {"fedavg+ft", "fomaml", "reptile", "maml"} and set(facts["bundle"]) < set(facts["every"])
    assert facts["every"][0] == facts["bundle"][0]  # same default and anchor
    every = rows[rows["method"] == EVERY]
    auto = rows[rows["method"] == "auto"]
    assert len(every) == len(auto) and set(every["choice"]) <= set(facts["every"])
    # each auto-every row is the chosen start's own score on that draw
    keys = ["site", "shots", "steps", "draw", "metric"]
    scored = rows[~rows["method"].isin(["auto", EVERY])].set_index(["method", *keys])["value"]
    for _, r in every.head(200).iterrows():
        assert r["value"] == scored[(r["choice"], *[r[k] for k in keys])]


def test_other_options_than_the_runs_are_refused(finished) -> None:
    from benchmarks.every_start import seed_rows

    spec, cfg, result = finished
    other = copy.deepcopy(cfg)
    other.seed = 1  # another seed's roles and draws: not this folder's run
    with pytest.raises(SystemExit, match="other code or options than the run's"):
        seed_rows(spec, other, result.output_dir)


def test_the_table_stars_intervals_that_exclude_zero_and_leaves_out_one_shot() -> None:
    from benchmarks.every_start_table import one

    record = {"vertical": "medical_imaging", "preset": "full", "seeds": [0], "command": "python x",
              "facts": {"0": {"bundle": ["fedavg+ft", "reptile"], "every": ["fedavg+ft", "reptile", "fomaml"],
                              "bundle_choices_differing_from_the_run": 0, "draws": 8}},
              "below": {"auto": 0, "auto-every": 1},
              "cells": [{"site": s, "shots": k, "steps": 1, "auto": [0.01, 0.002, 0.02] if k > 1 else [0.0, 0.0, 0.0],
                         "auto-every": [0.1, -0.01, 0.2] if k > 1 else [0.0, 0.0, 0.0],
                         "best_single": ["fomaml", 0.2]} for s in ("ALL", "clinic-x") for k in (1, 5)]}
    text = "\n".join(one(record))
    assert "| all (pooled) | 1 | +0.010\\* / +0.100 | fomaml +0.200 |" in text
    assert "| k = 5 | best single" in text and "| k = 1 |" not in text and "`auto-every` 1" in text
    assert text.startswith("**medical_imaging (full, seeds 0)**")
    # a record with options names them: two records of one vertical and preset must not read alike
    assert "\n".join(one({**record, "overrides": ["data.site_statistics=true"]})).startswith(
        "**medical_imaging (full, data.site_statistics=true, seeds 0)**")


def test_a_folder_that_is_not_a_finished_run_is_named(finished, tmp_path) -> None:
    from benchmarks.every_start import seed_rows

    spec, cfg, _ = finished
    with pytest.raises(SystemExit, match="not a finished run of these options: missing .*evaluation_rows.parquet"):
        seed_rows(spec, cfg, tmp_path / "seed0")
