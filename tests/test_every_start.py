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


def run_script(module, finished, tmp_path, monkeypatch) -> dict:
    """The script's ``main`` on the finished run's folder, as its command line would run it; its JSON line."""
    import json
    import sys

    _, _, result = finished
    out = tmp_path / "line.json"
    monkeypatch.setattr(sys, "argv", [f"{module.__name__.rsplit('.', 1)[-1]}.py", "sine", "--preset", "quick",
                                      "--runs", str(result.output_dir.parent), "--seeds", "0", "--set",
                                      "algorithms=[fomaml,reptile,maml]", "--json-out", str(out)])
    module.main()
    return json.loads(out.read_text())


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


def test_the_divergence_guard_rows_are_the_runs_rows_or_the_chosen_start_unadapted(finished, monkeypatch) -> None:
    """benchmarks/divergence_guard.py: `auto` as scored is the run's own row; with the guard, a cell keeps the run's
    adapted score where onboarding's guard does not fire and the chosen start's UNADAPTED score where it does."""
    import dataclasses

    import pandas as pd

    import benchmarks.divergence_guard
    from benchmarks.divergence_guard import seed_rows as guard_rows

    spec, cfg, result = finished
    keys = ["site", "shots", "steps", "draw", "metric"]
    run = pd.read_parquet(result.output_dir / "evaluation_rows.parquet")
    rows, facts = guard_rows(spec, cfg, result.output_dir)
    assert facts["bundle_choices_differing_from_the_run"] == 0
    pd.testing.assert_series_equal(run.query("method == 'auto'").set_index(keys)["value"].sort_index(),
                                   rows.query("method == 'auto'").set_index(keys)["value"].sort_index())
    if facts["guard_fired"]["auto+guard"] == 0:
        assert rows.query("method == 'auto+guard'")["value"].tolist() == rows.query("method == 'auto'")["value"].tolist()

    # a step size far too large for every site: the guard fires on every adapted cell, so each guarded row is the
    # chosen start's own score at 0 steps
    real = benchmarks.divergence_guard.method_candidate  # the guard's candidates only: the choice stays the run's
    monkeypatch.setattr(benchmarks.divergence_guard, "method_candidate",
                        lambda *a, **k: dataclasses.replace(real(*a, **k), lr_for=lambda steps: 1e4))
    rows, facts = guard_rows(spec, cfg, result.output_dir)
    assert facts["guard_fired"]["auto+guard"] == facts["guard_fired"]["fedavg+ft+guard"] == facts["adapted_cells"] > 0
    unadapted = run[run["steps"] == 0].set_index(["method", "site", "shots", "draw", "metric"])["value"]
    choice = run.query("method == 'auto'").drop_duplicates(["site", "shots", "steps", "draw"]).set_index(
        ["site", "shots", "steps", "draw"])["choice"]
    for r in rows.query("method == 'auto+guard' and steps > 0").head(100).itertuples():
        assert r.value == unadapted[(choice[(r.site, r.shots, r.steps, r.draw)], r.site, r.shots, r.draw, r.metric)]
    for r in rows.query("method == 'fedavg+ft+guard' and steps > 0").head(100).itertuples():
        assert r.value == unadapted[("fedavg+ft", r.site, r.shots, r.draw, r.metric)]
    # the ensemble's members are each kept unadapted, so its average is the run's unadapted ensemble
    assert facts["guard_fired"]["ensemble+guard"] == facts["adapted_cells"]
    guarded_ensemble = rows.query("method == 'ensemble+guard' and steps > 0")
    assert len(guarded_ensemble) > 0
    for r in guarded_ensemble.head(100).itertuples():
        assert r.value == pytest.approx(unadapted[("ensemble", r.site, r.shots, r.draw, r.metric)], abs=1e-6)


def test_the_divergence_guard_report_pairs_the_guarded_rows(finished, tmp_path, monkeypatch, capsys) -> None:
    """The script end to end on the run's folder: its JSON names the guard's counts, and where the guard never
    fires the guarded choice against the guarded baseline IS the run's `auto` against `fedavg+ft`."""
    from benchmarks import divergence_guard

    line = run_script(divergence_guard, finished, tmp_path, monkeypatch)
    assert line["benchmark"] == "divergence_guard" and set(line["facts"]["0"]["guard_fired"]) == {
        "auto+guard", "fedavg+ft+guard", "ensemble+guard"}
    cells = {(c["site"], c["shots"], c["steps"], c["method"]): c["diff"] for c in line["cells"]}
    assert any(m == divergence_guard.BOTH_GUARDED for *_, m in cells)
    assert any(m == divergence_guard.ENSEMBLE_GUARDED for *_, m in cells)
    if sum(line["facts"]["0"]["guard_fired"].values()) == 0:
        for (site, k, s, m), diff in cells.items():
            if m == divergence_guard.BOTH_GUARDED:
                assert diff == cells[(site, k, s, "auto")]
            if m == divergence_guard.ENSEMBLE_GUARDED:
                assert diff == cells[(site, k, s, "ensemble")]


def test_the_every_start_report_names_its_options_command_and_machine(finished, tmp_path, monkeypatch) -> None:
    from benchmarks import every_start

    line = run_script(every_start, finished, tmp_path, monkeypatch)
    assert line["benchmark"] == "every_start" and line["overrides"] == ["algorithms=[fomaml,reptile,maml]"]
    assert line["facts"]["0"]["bundle_choices_differing_from_the_run"] == 0 and line["cells"]
    assert "every_start.py" in line["command"] and line["machine"]["cores"] >= 1


def test_the_validation_evidence_rederives_the_runs_defaults(finished, tmp_path, monkeypatch) -> None:
    """benchmarks/validation_default_evidence.py: each validation site's gain per steps count, and the default
    the rule gives from it, which must be the run's own (else the script refuses)."""
    import json

    import benchmarks.validation_default_evidence as script
    import pipelines.registration_choice as rc
    from core.choice import gain_pvalue

    _, _, result = finished
    line = run_script(script, finished, tmp_path, monkeypatch)
    run_defaults = json.loads((result.output_dir / "fallback_defaults.json").read_text())["default_by_steps"]
    facts = line["by_seed"]["0"]
    assert {s: f["default"] for s, f in facts.items()} == run_defaults
    sites = {len(start["site_gains"]) for f in facts.values() for start in f["starts"].values()}
    assert len(sites) == 1 and sites.pop() >= 2  # one gain per validation site, the same sites everywhere
    for f in facts.values():
        for start in f["starts"].values():
            assert start["pvalue"] == round(gain_pvalue(start["site_gains"]), 4)
    # evidence that gives another default than the run's is refused, not printed as the run's
    forced = "fomaml" if "fedavg+ft" in run_defaults.values() else "fedavg+ft"
    monkeypatch.setattr(rc, "validation_default",
                        lambda methods, steps, higher: (next(m for m in methods if m.name == forced), "forced"))
    with pytest.raises(SystemExit, match="the reloaded evidence gives"):
        run_script(script, finished, tmp_path, monkeypatch)
