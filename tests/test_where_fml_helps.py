"""benchmarks/where_fml_helps.py: the tables of verticals/*.md are generated from the benchmarks' JSON lines."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
import sys

import pandas as pd

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from heldout_common import means_by_seed, paired_by_seed  # noqa: E402

SCRIPT = REPO_ROOT / "benchmarks" / "where_fml_helps.py"


def bench(metric: str, paired: list[dict]) -> dict:
    return {"vertical": "toy", "preset": "quick", "seeds": [0, 1], "headline_metric": metric,
            "registered_default": {"0": "fedavg+ft", "1": "fomaml"}, "auto_choices": {"fedavg+ft": 3, "fomaml": 1},
            "paired_vs_fedavg_ft": paired}


def entry(method: str, site: str, steps: int, diff: float, lo: float, hi: float) -> dict:
    return {"method": method, "shots": 5, "steps": steps, "site": site, "mean_diff": diff, "ci95": [lo, hi]}


def test_table_signs_lower_is_better_and_finds_the_worst_site(tmp_path):
    paired = [entry("auto", "ALL", 1, 9.0, 9.0, 9.0),  # a smaller steps count is not the reported column
              entry("auto", "ALL", 10, -1.0, -2.0, -0.5), entry("auto", "A", 10, -2.0, -3.0, -1.0),
              entry("auto", "B", 10, 0.5, -0.2, 1.2), entry("fomaml", "ALL", 10, -1.5, -2.5, -0.5),
              entry("ensemble", "ALL", 10, -3.0, -4.0, -2.0), entry("ensemble", "A", 10, 0.7, 0.2, 1.2),
              entry("ensemble", "B", 10, -0.1, -0.5, 0.3)]
    (tmp_path / "toy.json").write_text("progress line\n" + json.dumps(bench("rmse_last", paired)) + "\n")
    page = tmp_path / "README.md"
    page.write_text("intro\n<!-- where-fml-helps:start -->\nold\n<!-- where-fml-helps:end -->\noutro\n"
                      "<!-- recipe-ablation:start -->\nold table\n<!-- recipe-ablation:end -->\n"
                      "<!-- reference-gap:start -->\nold gaps\n<!-- reference-gap:end -->\n"
                      "<!-- auto-below-baseline:start -->\nold list\n<!-- auto-below-baseline:end -->\n")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "toy.json"), "--page", str(page)],
                          capture_output=True, text=True, check=True)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| toy"))
    # RMSE: a negative difference is a gain, so it is printed positive; the worst site is B (RMSE +0.5)
    assert "| 5 | 10 | +1.00 [+0.50, +2.00]* |" in row
    assert "B: -0.50 [-1.20, +0.20]" in row and "fomaml: +1.50 [+0.50, +2.50]*" in row
    # the ensemble is not a single method: its own column, pooled and at its worst site (A: RMSE +0.7)
    assert row.endswith("| +3.00 [+2.00, +4.00]\\*; A: -0.70 [-1.20, -0.20]\\* |")  # \\*: two stars, not emphasis
    text = page.read_text()
    assert "old" not in text and text.startswith("intro\n") and "fedavg+ft 75%" in text
    assert "<!-- reference-gap:start -->\nCells: the reference's mean" in text  # no reference row: only the note
    assert "- measured on not recorded (measured before the JSON lines named their machine): 1 of 1 lines" in text


def test_every_cell_where_auto_is_below_the_baseline_is_listed_not_only_the_tables_column(tmp_path):
    """The main table shows one steps count and the worst MEAN; the list checks every (site, k, steps) cell: a
    small difference beyond its interval at another steps count is listed, a group of one site counts once, and
    every tie (auto = fedavg+ft on every draw) is its own cell."""
    paired = [entry("auto", "ALL", 10, 0.0, -0.1, 0.1),
              entry("auto", "A", 10, 0.8, -0.5, 2.1),                # worst mean, within its interval: not listed
              entry("auto", "B", 1, 0.1, 0.02, 0.18),                # RMSE +0.1 beyond its interval: a miss
              entry("auto", "C", 1, -0.5, -0.9, -0.1), entry("auto", "group-of-C", 1, -0.5, -0.9, -0.1),  # better, once
              entry("auto", "A", 1, 0.0, 0.0, 0.0), entry("auto", "B", 10, 0.0, 0.0, 0.0),   # two ties, two cells
              entry("fomaml", "B", 1, 3.0, 2.0, 4.0)]               # not auto
    (tmp_path / "toy.json").write_text(json.dumps(bench("rmse_last", paired)) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "toy.json")], capture_output=True, text=True,
                         check=True).stdout
    row = next(line for line in out.split("| line | `auto` cells")[-1].splitlines() if line.startswith("| toy"))
    # \\*: not emphasis; \u2020: p ~ 0.007 stays below after false-discovery control over the line's 3 cells
    assert row == "| toy (quick, seeds 0,1) | 5 | 3 | 1 | B, k = 5, 1 steps: -0.10 [-0.18, -0.02]\\* \u2020 |"
    assert "`auto` differs from `fedavg+ft` in 3 of 5 cells; beyond its 95% interval it is better in 1 and worse in 1" in out
    assert "C = group-of-C" not in row  # the better cell is counted, not listed


def test_a_miss_unlikely_to_be_chance_is_marked_after_false_discovery_control(tmp_path):
    """Beyond its interval is not enough when a line has many cells: after Benjamini-Hochberg over the line's
    differing cells a far-below cell keeps its mark, a just-below one loses it, and the note counts both families
    (one line here, so they agree)."""
    far, near = entry("auto", "A", 1, 0.9, 0.6, 1.2), entry("auto", "B", 1, 0.11, 0.01, 0.21)  # RMSE: both below
    others = [entry("auto", f"S{i}", 1, -0.05 - i / 1000, -0.3, 0.2) for i in range(20)]  # within their intervals
    (tmp_path / "toy.json").write_text(json.dumps(bench("rmse_last", [far, near, *others])) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "toy.json")], capture_output=True, text=True,
                         check=True).stdout
    row = next(line for line in out.split("| line | `auto` cells")[-1].splitlines() if line.startswith("| toy"))
    assert "A, k = 5, 1 steps: -0.90 [-1.20, -0.60]\\* \u2020;" in row
    assert row.endswith("B, k = 5, 1 steps: -0.11 [-0.21, -0.01]\\* |")  # p ~ 0.016, but 22 cells: no mark
    assert "over each line's cells where it differs, 1 stay below" in out and "over all 22 cells at once" in out
    assert "the target speaks of, 1 do." in out


def test_false_discovery_control_and_the_cells_p_value():
    from where_fml_helps import below_pvalue, benjamini_hochberg

    assert benjamini_hochberg([0.001, 0.03, 0.04, 0.5]) == [True, False, False, False]  # 0.04 > 3/4 * 0.05
    assert benjamini_hochberg([0.001, 0.02, 0.03, 0.5]) == [True, True, True, False]  # step-up: 0.03 <= 3/4 * 0.05
    assert benjamini_hochberg([0.01, 0.02, 0.03, 0.04]) == [True, True, True, True]  # 0.04 <= 4/4 * 0.05
    assert abs(below_pvalue((-1.96, -3.92, 0.0)) - 0.025) < 1e-4  # an interval that just touches 0: p = 0.025
    assert below_pvalue((0.5, 0.5, 0.5)) == 1.0 and below_pvalue((-0.5, -0.5, -0.5)) == 0.0  # no spread


def test_a_listed_miss_says_on_how_many_seeds_the_site_itself_is_below(tmp_path):
    """With ``paired_by_seed_site`` recorded, each miss names how many seeds' own means are below (RMSE: above);
    a pooled group (no per-site entry) and an older line say nothing."""
    paired = [entry("auto", "B", 1, 0.1, 0.02, 0.18), entry("auto", "seen", 1, 0.2, 0.1, 0.3)]
    per_seed = [{"seed": s, "site": "B", "method": "auto", "shots": 5, "steps": 1, "mean_diff": d}
                for s, d in ((0, 0.3), (1, -0.1), (2, 0.05))]
    per_seed.append({"seed": 0, "site": "B", "method": "fomaml", "shots": 5, "steps": 1, "mean_diff": 9.0})
    (tmp_path / "toy.json").write_text(json.dumps({**bench("rmse_last", paired), "paired_by_seed_site": per_seed}))
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "toy.json")], capture_output=True, text=True,
                         check=True).stdout
    row = next(line for line in out.split("| line | `auto` cells")[-1].splitlines() if line.startswith("| toy"))
    assert row.endswith("; B, k = 5, 1 steps: -0.10 [-0.18, -0.02]\\*, 2 of 3 seeds \u2020 |")
    assert "seen, k = 5, 1 steps: -0.20 [-0.30, -0.10]\\* \u2020;" in row  # a pooled group: no per-seed count


def test_the_table_says_which_machine_measured_each_line(tmp_path):
    paired = [entry("auto", "ALL", 10, 0.1, 0.0, 0.2)]
    machine = {"cpu": "Xeon X", "cpu_capability": "AVX2", "cores": 2, "torch": "2.14.1", "kernel_env": {"MKL_CBWR": "COMPATIBLE"}}
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({**bench("auroc", paired), "machine": machine}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps(bench("auroc", paired)) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), *(str(tmp_path / f"{n}.json") for n in "abc")],
                         capture_output=True, text=True, check=True).stdout
    assert "- measured on Xeon X (AVX2, 2 cores), torch 2.14.1, MKL_CBWR=COMPATIBLE: 2 of 3 lines" in out
    assert "not recorded (measured before the JSON lines named their machine): 1 of 3 lines" in out


def test_the_table_says_which_lines_were_scored_with_onboardings_guard_and_how_often_it_fired(tmp_path):
    paired = [entry("auto", "ALL", 10, 0.1, 0.0, 0.2)]
    rows = [{"method": "auto", "shots": 5, "steps": 10, "site": "ALL", "mean": 0.8}]
    guarded = {**bench("auroc", paired), "rows": rows,
               "guard_kept_start": {"auto": [3, 120], "fedavg+ft": [7, 120], "fomaml": [1, 120]}}
    old = {**bench("auroc", paired), "overrides": ["eval.guard=false"], "rows": rows}
    (tmp_path / "a.json").write_text(json.dumps(guarded) + "\n")
    (tmp_path / "b.json").write_text(json.dumps(old) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "the divergence guard kept the start in 3 of `auto`'s 120, 7 of `fedavg+ft`'s 120 adapted cells" in out
    assert "scored WITHOUT onboarding's divergence guard (measured before 2026-12-07, `eval.guard=false`): 1 of 2 lines" in out
    assert out.count("divergence guard kept") == 1


def test_ablation_rows_are_init_by_recipe_beside_the_run_without_the_settings(tmp_path):
    def rows(offset: float) -> list[dict]:
        return [{"method": m, "shots": 5, "steps": s, "site": "ALL", "mean": v + offset, "ci95": [0, 0]}
                for m, s, v in [("fedavg+ft", 10, 12.0), ("fomaml+newton-head", 10, 11.0), ("local", 10, 40.0),
                                ("oracle no shift (non-federated)", 0, 10.5)]]

    base = {**bench("rmse_last", [entry("fomaml+newton-head", "ALL", 10, -1.0, -1.5, -0.5)]), "rows": rows(5.0)}
    varied = {**base, "overrides": ["data.site_statistics=true"], "rows": rows(0.0)}
    other = {**base, "vertical": "elsewhere"}  # no run with settings: not in the ablation
    for name, b in (("a", base), ("b", varied), ("c", other)):
        (tmp_path / f"{name}.json").write_text(json.dumps(b) + "\n")
    done = subprocess.run([sys.executable, str(SCRIPT), *[str(tmp_path / f"{n}.json") for n in "abc"]],
                          capture_output=True, text=True, check=True)
    text = done.stdout.split("| toy (quick, seeds 0,1): rmse_last", 1)[1]
    assert "| `fomaml+newton-head` | 16.00 (+1.00*) |" in text  # RMSE difference -1.0 printed as a gain
    assert "| toy (quick, data.site_statistics=true, seeds 0,1): rmse_last | k = 5 |" in text
    assert "| `oracle no shift (non-federated)` | 10.50 |" in text and "`local`" not in text
    assert "elsewhere (quick" not in done.stdout.split("Cells:")[0].split("| toy (quick, seeds 0,1): rmse_last")[1]


def test_the_verticals_page_holds_the_tables_of_the_committed_results(tmp_path):
    """The page is what the documented command writes from ``benchmarks/results/*.json`` (non-vertical
    reports in that folder, e.g. R1's pretty-printed JSON, are skipped), so its tables cannot drift."""
    results = sorted(str(f) for f in (REPO_ROOT / "benchmarks" / "results").glob("*.json"))
    assert_pages_regenerated(tmp_path, [str(SCRIPT), *results], "regenerate: python benchmarks/where_fml_helps.py "
                             "benchmarks/results/*.json --page verticals/*.md")


def assert_pages_regenerated(tmp_path: Path, argv: list[str], advice: str) -> subprocess.CompletedProcess:
    """Run a table generator with ``--page`` on copies of verticals/*.md: every page must come back unchanged."""
    pages = sorted((REPO_ROOT / "verticals").glob("*.md"))
    copies = [tmp_path / page.name for page in pages]
    for page, copy in zip(pages, copies):
        copy.write_text(page.read_text())
    done = subprocess.run([sys.executable, *argv, "--page", *map(str, copies)], capture_output=True, text=True,
                          check=True)
    for page, copy in zip(pages, copies):
        assert copy.read_text() == page.read_text(), f"{page.name}: {advice}"
    return done


def test_a_table_goes_to_the_page_holding_its_markers_and_a_missing_marker_writes_nothing(tmp_path):
    """With several pages, each table lands in the one holding its markers; a marker in no page (or in two) stops
    the command before any page is written."""
    (tmp_path / "toy.json").write_text(json.dumps(bench("rmse_last", [entry("auto", "ALL", 10, -1.0, -2.0, -0.5)])))
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text("<!-- where-fml-helps:start -->\nold\n<!-- where-fml-helps:end -->\n"
                     "<!-- auto-below-baseline:start -->\nold\n<!-- auto-below-baseline:end -->\n")
    second.write_text("<!-- recipe-ablation:start -->\nold\n<!-- recipe-ablation:end -->\n")
    argv = [sys.executable, str(SCRIPT), str(tmp_path / "toy.json"), "--page", str(first), str(second)]
    refused = subprocess.run(argv, capture_output=True, text=True)
    assert refused.returncode != 0 and "reference-gap:start" in refused.stderr and "found in none" in refused.stderr
    assert "old" in first.read_text() and "old" in second.read_text()  # nothing half-written
    second.write_text(second.read_text() + "<!-- reference-gap:start -->\nold\n<!-- reference-gap:end -->\n")
    subprocess.run(argv, capture_output=True, text=True, check=True)
    assert "old" not in first.read_text() and "old" not in second.read_text()
    assert "| toy" in first.read_text() and "| toy" not in second.read_text()
    doubled = tmp_path / "c.md"
    doubled.write_text(second.read_text())
    again = subprocess.run(argv + [str(doubled)], capture_output=True, text=True)
    assert again.returncode != 0 and "expected in exactly one" in again.stderr
    absent = subprocess.run(argv + [str(tmp_path / "nowhere.md")], capture_output=True, text=True)
    assert absent.returncode != 0 and "no such page" in absent.stderr and "nowhere.md" in absent.stderr


def test_the_checkpoint_selection_table_is_generated_from_its_experiment_records(tmp_path):
    """verticals/recipes.md's "Which round the validation operators keep" is what its documented command writes;
    each row's setting and selection signal come from the record's own overrides."""
    records = sorted(str(f) for f in (REPO_ROOT / "benchmarks" / "results" / "experiments").glob(
        "maintenance_full*_intel_xeon_2026-12-0[56].json"))
    cut_points = str(REPO_ROOT / "benchmarks" / "results" / "experiments" / "floor_cut_points_full_2026-12-06.json")
    done = assert_pages_regenerated(tmp_path, [str(REPO_ROOT / "benchmarks" / "checkpoint_selection.py"), *records,
                                               cut_points], "regenerate with the command in verticals/recipes.md")
    rows = [r for r in done.stdout.splitlines() if r.startswith("| ") and "setting" not in r]
    assert len(rows) == len(records) == 13
    # a no-simulation line is measured against the oracle at ITS windows (the cut-point record), or says it has none
    floor = json.loads(Path(cut_points).read_text().strip().splitlines()[-1])["by_seed"]
    default = next(r for r in rows if r.startswith("| no simulation | `rmse_last`, 2 draws (default) |"))
    line = next(json.loads(Path(f).read_text().strip().splitlines()[-1]) for f in records
                if [o for o in json.loads(Path(f).read_text().strip().splitlines()[-1])["overrides"]
                    if o != "eval.guard=false"] == ["data.simulate=false"])  # measured before the protocol's guard
    auto = {r["seed"]: r["mean"] for r in line["means_by_seed"] if (r["method"], r["shots"], r["steps"]) == ("auto", 1, 5)}
    assert default.endswith(" | " + " / ".join(f"{auto[s] - floor[str(s)]['no_simulation_cuts']['1']:.1f}"
                                               for s in sorted(auto)) + " |")
    without = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "checkpoint_selection.py"), *records],
                             capture_output=True, text=True, check=True).stdout
    assert "| no simulation | `rmse_last`, 2 draws (default) |" in without and "no floor at this line's windows" in without
    assert "| site statistics | mean of the last 3 validated rounds |" in done.stdout
    assert "| no simulation | `rmse_all`, 2 draws |" in done.stdout
    assert "| default simulation | `rmse_last`, 8 draws |" in done.stdout


def test_each_seed_of_auto_is_shown_signed_like_the_table(tmp_path):
    """A pooled gain can be one seed's: the generated bullet lists `auto`'s difference per seed and k (RMSE:
    lower is better, so a negative difference is printed as a gain)."""
    by_seed = [{"seed": s, "method": m, "shots": k, "steps": st, "mean_diff": d}
               for s, m, k, st, d in [(0, "auto", 5, 10, -1.0), (1, "auto", 5, 10, 2.5), (0, "auto", 5, 1, 9.0),
                                      (0, "fomaml", 5, 10, -7.0), (1, "auto", 10, 10, 0.25), (0, "auto", 10, 10, 0.0)]]
    line = {**bench("rmse_last", [entry("auto", "ALL", 10, 0.1, 0.0, 0.2)]), "paired_by_seed": by_seed}
    (tmp_path / "toy.json").write_text(json.dumps(line) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "toy.json")], capture_output=True, text=True,
                         check=True).stdout
    assert "`auto` − `fedavg+ft` by seed (k = 5 / 10, 10 steps): seed 0 +1.00 / +0.00, seed 1 -2.50 / -0.25" in out


def test_paired_by_seed_pools_each_seeds_sites_on_the_headline():
    rows = pd.DataFrame([{"site": site, "method": method, "shots": 5, "steps": 1, "draw": seed * 10_000 + d,
                          "metric": metric, "value": value + (1.0 if method == "auto" else 0.0) * (seed + 1) * (2 if site == "b" else 1),
                          "seed": seed}
                         for seed in (0, 1) for site in ("a", "b") for d in range(2)
                         for method in ("fedavg+ft", "auto") for metric, value in (("rmse", 10.0), ("mae", 3.0))])
    paired = pd.DataFrame([{"metric": "rmse"}])
    out = paired_by_seed(rows, paired)
    # seed 0: site a +1, site b +2 -> +1.5 pooled; seed 1: +2, +4 -> +3; one entry per seed (headline only)
    assert out == [{"seed": 0, "method": "auto", "shots": 5, "steps": 1, "mean_diff": 1.5},
                   {"seed": 1, "method": "auto", "shots": 5, "steps": 1, "mean_diff": 3.0}]
    by_site = paired_by_seed(rows, paired, per_site=True)  # the units of a seed-clustered interval
    assert sorted((e["seed"], e["site"], e["mean_diff"]) for e in by_site) == [(0, "a", 1.0), (0, "b", 2.0),
                                                                              (1, "a", 2.0), (1, "b", 4.0)]
    assert paired_by_seed(rows, pd.DataFrame()) == []


def test_means_by_seed_averages_each_seeds_sites_and_draws_on_the_headline_only():
    rows = pd.DataFrame([{"site": site, "method": method, "shots": 1, "steps": 0, "draw": d, "metric": metric,
                          "value": value + seed + (2.0 if site == "b" else 0.0) + d, "seed": seed}
                         for seed in (0, 1) for site in ("a", "b") for d in range(2)
                         for method in ("fedavg+ft", "oracle") for metric, value in (("rmse", 10.0), ("mae", 3.0))])
    out = means_by_seed(rows, pd.DataFrame([{"metric": "rmse"}]))
    # seed 0: sites a (10, 11) and b (12, 13) -> 11.5; seed 1: 12.5; every method, the mae rows left out
    assert {(e["seed"], e["method"], e["mean"]) for e in out} == {(0, "fedavg+ft", 11.5), (0, "oracle", 11.5),
                                                                  (1, "fedavg+ft", 12.5), (1, "oracle", 12.5)}
    assert means_by_seed(rows, pd.DataFrame()) == []


def test_reference_gaps_are_per_seed_distances_to_the_non_federated_row(tmp_path):
    def mean(seed: int, method: str, steps: int, value: float) -> dict:
        return {"seed": seed, "method": method, "shots": 1, "steps": steps, "mean": value}

    ref = "oracle no shift (non-federated)"
    means = [mean(0, ref, 0, 13.0), mean(0, "auto", 0, 20.0), mean(0, "auto", 5, 14.5), mean(0, "fomaml", 5, 14.0),
             mean(0, "fedavg+ft", 5, 14.5), mean(0, "local", 5, 1.0),  # local (from scratch) is not a candidate
             mean(1, ref, 0, 12.0), mean(1, "auto", 5, 12.5), mean(1, "fomaml", 5, 13.0), mean(1, "fedavg+ft", 5, 12.5)]
    line = {**bench("rmse_last", [entry("auto", "ALL", 5, 0.0, -1.0, 1.0)]), "means_by_seed": means}
    (tmp_path / "toy.json").write_text(json.dumps(line) + "\n")
    (tmp_path / "no_ref.json").write_text(json.dumps({**line, "means_by_seed": means[1:6]}) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "toy.json"), str(tmp_path / "no_ref.json")],
                         capture_output=True, text=True, check=True).stdout
    rows = [r for r in out.splitlines() if r.startswith("| toy (quick, seeds 0,1), `oracle")]
    # seed 0: auto (5 steps, not 0) 1.5 above the floor, the best method fomaml 1.0; seed 1: fedavg+ft and
    # auto tie at +0.5 (either may be named); a line without a reference row adds no row
    assert rows[0] == "| toy (quick, seeds 0,1), `oracle no shift (non-federated)` | 0 | 13.00; `auto` +1.50; `fomaml` +1.00 |"
    assert rows[1].startswith("| toy (quick, seeds 0,1), `oracle no shift (non-federated)` | 1 | 12.00; `auto` +0.50; `")
    assert len(rows) == 2


def test_the_fleet_onboarding_table_is_generated_from_the_lines_that_onboard_with_each_seed(tmp_path):
    """verticals/maintenance/README.md's per-seed official-fleet table is what its documented command writes; lines
    measured before per-seed onboarding (no ``onboard_by_seed``) are left out, not shown with one seed's number."""
    page = REPO_ROOT / "verticals" / "maintenance" / "README.md"
    copy = tmp_path / "README.md"
    copy.write_text(page.read_text())
    results = REPO_ROOT / "benchmarks" / "results"
    files = sorted(str(f) for f in results.glob("maintenance_full_official_fleet*.json")) + sorted(
        str(f) for f in (results / "experiments").glob("fleet_onboarding_*.json")) + sorted(
        str(f) for f in (results / "experiments").glob("fleet_central_reference_*.json"))
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "fleet_onboarding.py"), *files,
                           "--page", str(copy)], capture_output=True, text=True, check=True)
    assert copy.read_text() == page.read_text(), "regenerate with the command in verticals/maintenance/README.md"
    rows = [r for r in done.stdout.splitlines() if r.startswith("| ") and "training settings" not in r]
    lines = [json.loads(Path(f).read_text().strip().splitlines()[-1]) for f in files]
    forced = sum(len(next(iter(line["onboard_by_seed"].values())).get("candidates", {})) for line in lines
                 if "onboard_by_seed" in line)
    central = [r for r in rows if "**central reference**" in r]
    assert len(central) == sum(line.get("benchmark") == "fleet_central_reference" for line in lines) >= 1
    assert len(rows) == len(files) + forced and len(files) >= 2
    # a line that also forced a start adds its row, with that start's numbers
    with_forced = json.loads(json.dumps(lines[0]))
    for seed, value in zip(sorted(with_forced["onboard_by_seed"], key=int), (11.11, 12.22, 13.33)):
        with_forced["onboard_by_seed"][seed]["candidates"] = {"toy-start": {"before": 20.0, "after": value}}
    (tmp_path / "forced.json").write_text(json.dumps(with_forced) + "\n")
    forced_out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "fleet_onboarding.py"),
                                 str(tmp_path / "forced.json")], capture_output=True, text=True, check=True).stdout
    assert "started from `toy-start` (`--candidate toy-start`) | " in forced_out
    assert "| 11.11 / 12.22 / 13.33 | 12.22 |" in forced_out
    # a line measured before per-seed onboarding (the champion's number only) is left out
    older = json.loads(Path(files[0]).read_text().strip().splitlines()[-1])
    del older["onboard_by_seed"]
    (tmp_path / "older.json").write_text(json.dumps(older) + "\n")
    again = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "fleet_onboarding.py"), *files,
                            str(tmp_path / "older.json")], capture_output=True, text=True, check=True)
    assert [r for r in again.stdout.splitlines() if r.startswith("| ") and "training settings" not in r] == rows
    for line in rows:  # the mean column is the mean of the three seeds shown
        seeds, mean = line.split(" | ")[-2:]
        values = [float(v) for v in seeds.split(" / ")]
        # each shown value and the mean are rounded to 0.01 (+-0.005 each): they agree within 0.01
        assert len(values) == 3 and abs(sum(values) / 3 - float(mean.strip(" |"))) <= 0.0101


def test_the_unsplit_fallback_table_reads_the_ensemble_at_the_shots_that_cannot_be_split(tmp_path):
    """verticals/new_sites.md's hedge table is what its command writes; on a toy line it reads only the shots counts
    ``fallback_defaults`` records as unsplittable, lists every ensemble cell below the interval, counts a group of
    one site once, and measures the shortfall against the cell's best single start (fedavg+ft being 0)."""
    script = REPO_ROOT / "benchmarks" / "unsplit_fallback.py"
    results = sorted(str(f) for f in (REPO_ROOT / "benchmarks" / "results").glob("*.json"))
    assert_pages_regenerated(tmp_path, [str(script), *results], "regenerate: python benchmarks/unsplit_fallback.py "
                             "benchmarks/results/*.json --page verticals/*.md")

    def at(method, site, shots, steps, diff, lo, hi):
        return {**entry(method, site, steps, diff, lo, hi), "shots": shots}

    paired = [at("ensemble", "A", 1, 5, -0.02, -0.03, -0.01), at("ensemble", "G", 1, 5, -0.02, -0.03, -0.01),
              at("ensemble", "B", 1, 5, 0.03, 0.01, 0.05), at("ensemble", "ALL", 1, 5, 0.004, -0.01, 0.02),
              at("fomaml", "B", 1, 5, 0.05, 0.02, 0.08), at("fomaml", "A", 1, 5, -0.04, -0.06, -0.02),
              at("ensemble", "A", 5, 5, -0.09, -0.1, -0.08)]  # k = 5 splits: not this table's
    line = {**bench("auc", paired), "fallback_defaults": {"0": {"validation_choice_by_shots": {"1": {}}}}}
    (tmp_path / "toy.json").write_text(json.dumps(line) + "\n")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "toy.json")], capture_output=True, text=True,
                         check=True).stdout
    rows = [r for r in out.splitlines() if r.startswith("| toy")]
    # A and G (a group of that one site) are one cell; B is above; the pooled row is not a cell; vs fomaml's +0.05 on B
    assert rows == ["| toy (quick, seeds 0,1) | 1 | 2 | 1 | A = G, 5 steps: -0.020 [-0.030, -0.010]\\* | "
                    "+0.004 to +0.004 | 0.020 (B, 5 steps, `fomaml`) |"]
    assert out.rstrip().splitlines()[-1] == ("All lines: the `ensemble` as that fallback is below `fedavg+ft` beyond its "
                                             "interval in 1 of 2 cells, 0 of them unadapted (0 steps) and 1 after "
                                             "adapting (toy (quick, seeds 0,1): 1).")
