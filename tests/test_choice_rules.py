"""benchmarks/choice_rules.py: the rules it compares, on losses built so that each rule's answer is known."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from benchmarks.choice_rules import apply_rules, fold_means, holm
from tests.conftest import REPO_ROOT


def test_holm_steps_down_and_stops_at_the_first_p_value_it_keeps() -> None:
    assert holm({"a": 0.04, "b": 0.06}) == ["a", "b"]      # 0.04 < 0.1 / 2, then 0.06 < 0.1 / 1
    assert holm({"a": 0.06, "b": 0.07}) == []              # 0.06 >= 0.05: nothing, though each is < 0.1
    assert holm({"a": 0.01, "b": 0.2, "c": 0.02}) == ["a", "c"]
    assert holm({"a": 0.09}) == ["a"]                      # one comparison: the uncorrected test


def test_fold_means_follow_the_folds_order() -> None:
    assert fold_means([1.0, 3.0, 5.0, 2.0, 2.0, 8.0], [2, 1, 3]) == [2.0, 5.0, 4.0]


def _losses(gains: list[float], base: float = 1.0) -> list[float]:
    return [base - g for g in gains]


def test_the_rules_differ_where_they_should() -> None:
    base = [1.0] * 8
    # "fml" is better on every unit (the exact one-sided p of 8 agreeing pairs is 1/256), "other" on 6 of 8
    cv = {"fedavg+ft": base, "fml": _losses([0.3] * 8), "other": _losses([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, -0.1, -0.1])}
    folds = [2, 2, 2, 2]
    picks = apply_rules(cv, default="other", fold_sizes=folds)
    assert picks["R2"] == "other"            # the lowest mean loss, no test
    assert picks["R1"] == "other"            # both pass p < 0.1 per unit; the lower mean wins
    assert picks["R4"] == "fml"              # per fold: "other" has 3 of 4 folds better, p = 1/8 > 0.1
    assert picks["R0"] == "other"            # the default as anchor
    # two candidates, each p in [0.05, 0.1): R1 takes one, Holm none
    near = {"fedavg+ft": base[:5], "a": _losses([0.2, 0.2, 0.2, 0.2, -0.05]), "b": _losses([0.3, 0.3, 0.3, 0.3, -0.05])}
    picks = apply_rules(near, default="fedavg+ft", fold_sizes=[1] * 5)
    assert picks["R1"] == "b" and picks["R3"] == "fedavg+ft" and picks["R5"] == "fedavg+ft"  # neither p < 0.05
    assert apply_rules(cv, default="other", fold_sizes=folds)["R5"] == "other"  # both p < 0.05: the lower mean


def test_from_json_applies_the_rules_without_running(tmp_path) -> None:
    record = dict(seed=0, site="s1", shots=2, steps=5, draw=0, default="fedavg+ft", auto="fml", fold_sizes=[1] * 6,
                  cv={"fedavg+ft": [1.0] * 6, "fml": [0.5] * 6}, true={"fedavg+ft": 0.2, "fml": 0.3})
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"benchmark": "choice_rules", "vertical": "fraud", "records": [record]}) + "\n")
    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "choice_rules.py"), "fraud",
                          "--from-json", str(path)], capture_output=True, text=True, check=True).stdout
    assert "| 5 | 2 | R1 | 100% | +0.100 [+0.100, +0.100] | s1: +0.100 [+0.100, +0.100] |" in out
    assert "R1 reproduces the auto row's choice on 1 of 1 draws" in out
    assert json.loads(out.strip().splitlines()[-1])["r1_mismatches"] == 0
    # and again from its own gzipped output, records and all
    again = tmp_path / "again.json.gz"
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "choice_rules.py"), "fraud", "--from-json", str(path),
                    "--json-out", str(again)], capture_output=True, text=True, check=True)
    kept = json.loads(gzip.decompress(again.read_bytes()))
    assert kept["records"][0]["rules"]["R1"] == "fml" and kept["records"][0]["cv"] == record["cv"]


@pytest.mark.parametrize("p_values", [{"x": 0.5}, {}])
def test_holm_keeps_nothing_it_cannot_reject(p_values: dict[str, float]) -> None:
    assert holm(p_values) == []


def test_r6_tests_the_positives_the_folds_list_last() -> None:
    import torch

    from benchmarks.choice_rules import positives
    from core.choice import pairwise_ranking, split_support

    # a balanced support ordered by class, as episodes draw it: 5 negatives, then 5 positives, 5 folds
    x, y = torch.arange(10.0)[:, None], torch.tensor([0] * 5 + [1] * 5)
    folds = split_support((x, y), None, y, max_folds=5)
    assert [[int(u[1]) for u in held] for _, held in folds] == [[0, 1]] * 5   # negatives first in every fold
    losses = pairwise_ranking(lambda params, x: x.reshape(-1) * params["w"])({"w": torch.tensor(0.3)}, folds[0][1])
    assert losses[0] == losses[1]               # one pair: R1's two units are one number twice
    assert positives([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 4]) == [2.0, 5.0, 6.0]
    # "fml" better on 4 folds of one pair each: 8 agreeing units pass R1 (p = 1/256), 4 positives do (1/16)...
    cv = {"fedavg+ft": [1.0] * 8, "fml": [0.5] * 8}
    assert apply_rules(cv, "fedavg+ft", [2] * 4, ranked=True)["R6"] == "fml"
    # ...2 folds do not: 4 units pass R1 (p = 1/16), 2 positives cannot (p = 1/4)
    picks = apply_rules({n: v[:4] for n, v in cv.items()}, "fedavg+ft", [2, 2], ranked=True)
    assert picks["R1"] == "fml" and picks["R6"] == "fedavg+ft"
    assert apply_rules({n: v[:4] for n, v in cv.items()}, "fedavg+ft", [2, 2])["R6"] == "fml"  # not ranked: R1


def test_decoupled_scores_each_pick_on_the_other_draws_of_its_seed_and_site() -> None:
    from benchmarks.choice_rules import decoupled

    def rec(seed: int, site: str, fml: float) -> dict:
        return dict(seed=seed, site=site, true={"fedavg+ft": 0.5, "fml": 0.5 + fml})

    # the draw whose support favoured fml (+0.3 on its own scored rows) left rows where fml loses elsewhere
    cell = [rec(0, "a", 0.3), rec(0, "a", -0.1), rec(0, "a", -0.2), rec(1, "a", 0.9), rec(0, "b", 0.9)]
    picks = ["fml", "fedavg+ft", "fedavg+ft", "fml", "fml"]
    got = decoupled(cell, picks)
    assert got[:3] == pytest.approx([-0.15, 0.0, 0.0])
    assert got[3:] == []                      # no other draw of seed 1 / site b: nothing to score on


def test_fixed_scoring_scores_every_draw_on_one_half_and_draws_supports_from_the_other() -> None:
    import torch

    from benchmarks.choice_rules import fixed_scoring_split
    from core.tasks import EpisodeSpec, Site

    site = Site("s", torch.zeros(31, 2), torch.tensor([0] * 20 + [1] * 11))
    split = fixed_scoring_split(run_seed=0)
    spec = EpisodeSpec(shots=3, query=None, by="class", num_classes=2)
    draws = [split(site, spec, torch.Generator().manual_seed(d)) for d in range(5)]
    scored = {tuple(sorted(q.tolist())) for _, q in draws}
    assert len(scored) == 1                                  # one scored set for every draw
    assert sorted(int(site.y[i]) for i in next(iter(scored))) == [0] * 10 + [1] * 5   # half of each class
    assert len({tuple(s.tolist()) for s, _ in draws}) > 1    # supports still vary...
    assert all(not set(s.tolist()) & set(q.tolist()) for s, q in draws)              # ...never scored rows
    assert split(site, EpisodeSpec(shots=9, query=None, by="class", num_classes=2),
                 torch.Generator().manual_seed(0))[1].numel() == 10 + 1  # 11 positives, 9 shots: one scored
    other = fixed_scoring_split(run_seed=1)(site, spec, torch.Generator().manual_seed(0))[1]
    assert sorted(other.tolist()) != list(next(iter(scored)))                    # the run seed moves the split
    train = EpisodeSpec(shots=3, query=2, by="class", num_classes=2)
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    from core.tasks import split_indices

    assert all(torch.equal(a, b) for a, b in zip(split(site, train, gen_a), split_indices(site, train, gen_b)))
    # only while the run scores its test sites (validation sites choose the bundle with the plain protocol)
    from benchmarks.choice_rules import while_on

    flag = {"on": False}
    gated = fixed_scoring_split(run_seed=0, active=lambda: flag["on"])
    plain = split_indices(site, spec, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(gated(site, spec, torch.Generator().manual_seed(3)), plain))
    assert gated.used == 0                                   # inactive: nothing split (a run would refuse)
    seen = while_on(lambda: gated(site, spec, torch.Generator().manual_seed(3)), flag)()
    assert gated.used == 1
    assert sorted(seen[1].tolist()) == list(next(iter(scored))) and flag["on"] is False


def test_from_json_merges_the_records_of_several_lines(tmp_path) -> None:
    paths = []
    for seed in (0, 1):
        record = dict(seed=seed, site="s1", shots=2, steps=5, draw=0, default="fedavg+ft", auto="fml", fold_sizes=[1] * 6,
                      cv={"fedavg+ft": [1.0] * 6, "fml": [0.5] * 6}, true={"fedavg+ft": 0.2, "fml": 0.3})
        paths.append(tmp_path / f"seed{seed}.json")
        paths[-1].write_text(json.dumps({"benchmark": "choice_rules", "vertical": "fraud", "seeds": [seed],
                                         "records": [record]}) + "\n")
    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "choice_rules.py"), "fraud",
                          "--from-json", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    assert "R1 reproduces the auto row's choice on 2 of 2 draws" in out
    assert json.loads(out.strip().splitlines()[-1])["seeds"] == [0, 1]


def test_r7_lets_a_site_keep_a_start_unadapted_when_its_folds_show_adapting_clearly_hurts() -> None:
    """R7: after s > 0 steps every candidate also competes unadapted (``NAME@0``, the same draw's 0-step losses
    on the same folds); the adapted ``fedavg+ft`` stays the anchor, and at 0 steps R7 is R1."""
    from benchmarks.choice_rules import summary, with_unadapted

    def record(steps: int, cv: dict, true: dict) -> dict:
        r = dict(seed=0, site="s1", shots=8, steps=steps, draw=0, default="fedavg+ft", auto="fedavg+ft",
                 fold_sizes=[2] * 4, cv=cv, true=true)
        r["rules"] = apply_rules(r["cv"], r["default"], r["fold_sizes"])
        return r

    start = record(0, {"fedavg+ft": [1.0] * 8, "fml": [1.1] * 8}, {"fedavg+ft": 0.30, "fml": 0.25})
    adapted = record(5, {"fedavg+ft": [1.5] * 8, "fml": [1.6] * 8}, {"fedavg+ft": 0.20, "fml": 0.18})
    with_unadapted([start, adapted])
    assert start["rules"]["R7"] == start["rules"]["R1"] == "fedavg+ft"
    assert adapted["rules"]["R1"] == "fedavg+ft" and adapted["rules"]["R7"] == "fedavg+ft@0"  # all 8 units agree
    assert adapted["true"]["fedavg+ft@0"] == 0.30 and adapted["true"]["fml@0"] == 0.25
    lines = summary([start, adapted], 3)
    assert "| R7 | +0.100 | 0 of 1 | 100% | 100% |" in lines and "| R1 | +0.000 | 0 of 1 | 0% | 0% |" in lines
    # a draw with no 0-step record (its support did not split at 0 steps) keeps R1's choice
    lone = record(20, {"fedavg+ft": [1.5] * 8, "fml": [1.0] * 8}, {"fedavg+ft": 0.2, "fml": 0.3})
    lone["draw"] = 1
    with_unadapted([lone])
    assert lone["rules"]["R7"] == lone["rules"]["R1"] == "fml"


def test_the_r7_table_of_verticals_readme_is_what_the_records_give() -> None:
    """verticals/new_sites.md's R7 table is the summary `choice_rules.py --from-json` wrote into each committed record
    (`summary` itself is checked above; re-applying the rules to a record is checked in test_signed_rank)."""
    from benchmarks.choice_rules import read_text

    page = (REPO_ROOT / "verticals" / "new_sites.md").read_text()
    for name in ("maintenance_full", "fraud_full", "fraud_full_boil", "fraud_full_learned", "imaging_full"):
        out = json.loads(read_text(str(REPO_ROOT / "benchmarks" / "results" / "experiments" /
                                       f"choice_rules_{name}.json.gz")).strip().splitlines()[-1])
        assert all("R7" in r["rules"] for r in out["records"]) and out["r1_mismatches"] == 0
        cells = {line.strip("| ").split(" | ")[0]: line.strip("| ").split(" | ")[1:] for line in out["summary"][2:]}
        r1, r7 = cells["R1"], cells["R7"]
        row = f"| `{name}` | {r1[0]}, {r1[1]} | {r7[0]}, {r7[1]} | {r7[2]} | {r7[3]} |"
        assert row in page, f"regenerate the R7 table: {row}"
