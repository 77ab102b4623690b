"""Which per-site choice rule keeps every held-out site at or above ``fedavg+ft``? A diagnostic, not a
headline benchmark: it runs ``fml run <vertical> --preset P`` per seed (with ``--set`` overrides, like the
held-out benchmarks) and, on every test draw whose support splits, records the per-unit cross-validation
losses the ``auto`` row's choice compared (its candidates, recipes, step sizes, folds and criterion), then
applies several rules to the same losses:

- ``R0``: the validated default is the anchor;
- ``R1``: ``fedavg+ft`` is the anchor (the rule ``auto`` and ``fml onboard`` use): a candidate replaces it
  when its one-sided Wilcoxon p-value is below 0.1; the lowest mean loss among those;
- ``R2``: the lowest mean cross-validation loss, no test;
- ``R3``: R1 with Holm's step-down correction over the candidates compared with ``fedavg+ft`` (the
  family-wise false-positive rate of the m comparisons at 0.1 instead of up to m x 0.1);
- ``R4``: R1 with the FOLDS as the test's units (each fold's mean gain): the units of one fold are scored by
  models adapted on the same training fold, so their differences are not independent, which the per-unit
  test assumes;
- ``R5``: R1 at p < 0.05: half the false-positive rate per comparison (added 2026-12-05, before the imaging
  records were read, with the acceptance criterion of verticals/new_sites.md);
- ``R6``: R1 with the held-out POSITIVES as the test's units, for the pairwise ranking criterion (fraud,
  binary imaging): a positive's loss is its mean pair loss against the fold's negatives, and a negative's is
  the mean over the same pairs seen from the other side, so in a fold of one positive and one negative the
  two units R1 counts are one number twice (added 2026-12-05 afternoon, after reading that fraud's Accura misses
  sit at k = 2 and 5, where every fold holds one example of each class, with the same acceptance criterion);
- ``R7``: R1 that also chooses the ADAPTATION SETTING (issue 13: "the candidate and adaptation setting"):
  after s > 0 steps, each candidate UNADAPTED (``NAME@0``, its 0-step losses on the same folds) competes
  too, with the adapted ``fedavg+ft`` still the anchor of the same test; at 0 steps it is R1 (added
  2026-12-06, to ask whether "don't adapt" would have spared sites that adaptation hurts; records only).

The JSON line keeps every draw's per-unit losses and fold sizes, so ``--from-json FILE`` applies the rules
again (e.g. after adding one) without re-running anything.

It prints, per steps and shots, each rule's pooled paired difference against ``fedavg+ft`` on the draws
that split (positive = better; error metrics negated), its worst test site, and how often it left
``fedavg+ft``, with 95% intervals over seeds x draws; and the same DECOUPLED (each draw's pick scored on the
other draws of its seed and site, :func:`decoupled`), which tells a rule's real misses from the protocol's:
a draw is scored on the site's rows outside its support, so on a small site the support's evidence and the
scored rows pull opposite ways; it checks that R1, re-applied to the recorded losses,
reproduces the ``auto`` row's choices. The test sites' scores are read only to report the rules, never by a rule.

    python benchmarks/choice_rules.py fraud --preset full --seeds 0 1 2
    python benchmarks/choice_rules.py maintenance --preset full --seeds 0 1 2 --set 'algorithms=[fomaml-group,fomaml-lpft,r2d2]'
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RULES = ["R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7"]
#: the suffix of a candidate kept unadapted among R7's settings
UNADAPTED = "@0"
#: verticals whose recorded losses are the pairwise ranking criterion on balanced folds (negatives first)
RANKED = {"fraud", "medical_imaging"}
ALPHA = 0.1


def holm(pvalues: dict[str, float], alpha: float = ALPHA) -> list[str]:
    """The names whose null Holm's step-down procedure rejects at family-wise level ``alpha``."""
    ordered = sorted(pvalues, key=pvalues.get)
    rejected = []
    for i, name in enumerate(ordered):
        if pvalues[name] >= alpha / (len(ordered) - i):
            break
        rejected.append(name)
    return rejected


def fold_means(losses: list[float], fold_sizes: list[int]) -> list[float]:
    """The mean of ``losses`` (units in the folds' order) over each fold."""
    out, start = [], 0
    for n in fold_sizes:
        out.append(sum(losses[start:start + n]) / n)
        start += n
    return out


def positives(losses: list[float], fold_sizes: list[int]) -> list[float]:
    """The losses of each fold's held-out positives: a balanced fold lists its negatives first (the support's
    rows are ordered by class, and :func:`core.choice.fold_units` keeps that order), so its second half."""
    out, start = [], 0
    for n in fold_sizes:
        out += losses[start + n // 2:start + n]
        start += n
    return out


def apply_rules(cv: dict[str, list[float]], default: str, fold_sizes: list[int],
                base: str = "fedavg+ft", ranked: bool = False) -> dict[str, str]:
    """Each rule's choice from the candidates' paired per-unit cross-validation losses ``cv`` (``ranked``: they
    are the pairwise ranking criterion's, on balanced folds; R6 is R1 otherwise)."""
    from core.choice import choose, pvalues_against

    mean = {n: sum(v) / len(v) for n, v in cv.items()}
    pvalues = pvalues_against(cv, base)
    by_fold = {n: fold_means(v, fold_sizes) for n, v in cv.items()}

    def lowest(passing: list[str]) -> str:  # the lowest mean loss among those that pass and beat the base
        return min((n for n in passing if mean[n] < mean[base]), key=lambda n: mean[n], default=base)

    return {"R0": choose(cv, default), "R1": choose(cv, base, pvalues), "R2": min(cv, key=lambda n: mean[n]),
            "R3": lowest(holm(pvalues)), "R4": choose(by_fold, base),
            "R5": lowest([n for n, p in pvalues.items() if p < ALPHA / 2]),
            "R6": choose({n: positives(v, fold_sizes) for n, v in cv.items()}, base) if ranked else choose(cv, base)}


def with_unadapted(records: list[dict[str, Any]]) -> None:
    """Each record after s > 0 steps gets R7's choice and, for every candidate, ``NAME@0``'s losses and true
    score from the record of the same draw at 0 steps (the same support, so the same folds and units)."""
    from core.choice import choose

    at_zero = {(r["seed"], r["site"], r["shots"], r["draw"]): r for r in records if r["steps"] == 0}
    for r in records:
        zero = at_zero.get((r["seed"], r["site"], r["shots"], r["draw"])) if r["steps"] > 0 else None
        if zero is None:
            r["rules"]["R7"] = r["rules"]["R1"]
            continue
        cv = {**r["cv"], **{n + UNADAPTED: v for n, v in zero["cv"].items()}}
        r["true"].update({n + UNADAPTED: v for n, v in zero["true"].items()})
        r["rules"]["R7"] = choose(cv, "fedavg+ft")


def fixed_scoring_split(run_seed: int, active: Callable[[], bool] = lambda: True) -> Any:
    """A stand-in for ``core.tasks.split_indices`` in held-out tasks of class-drawn sites (``query=None``) while
    ``active()`` (the run scores its TEST sites: validation sites, which choose the bundle and step sizes, keep
    the protocol, so the models and candidates are the plain run's): each
    class's rows are split ONCE per (run seed, site, class) into a scored half and a pool, the support is drawn
    from the pool and every draw is scored on the same half, so a support's evidence and the scored rows are
    independent (a class too small for halves keeps at least one row scored and at least ``shots`` in the pool).
    Training episodes (``query`` set) and other episode kinds are untouched."""
    import hashlib

    import numpy as np
    import torch

    from core import tasks

    original = tasks.split_indices

    def split(site, spec, gen):
        if not active() or spec.query is not None or spec.by != "class":
            return original(site, spec, gen)
        classes = range(spec.num_classes) if spec.num_classes is not None else torch.unique(site.y).tolist()
        support, scored = [], []
        for c in classes:
            idx = np.asarray(site.rows_of_class(c))
            key = hashlib.sha256(f"{run_seed}/{site.site_id}/{c}".encode()).digest()
            fixed = idx[np.random.default_rng(int.from_bytes(key[:8], "little")).permutation(len(idx))]
            n_scored = max(1, min(len(idx) // 2, len(idx) - spec.shots - 1))
            pool = fixed[n_scored:]
            support.append(pool[torch.randperm(len(pool), generator=gen).numpy()[:spec.shots]])
            scored.append(fixed[:n_scored])
        split.used += 1
        return torch.from_numpy(np.concatenate(support)), torch.from_numpy(np.concatenate(scored))

    split.used = 0  # draws it split: 0 after a run means the vertical's test tasks never came through it
    return split


def while_on(fn: Callable[..., Any], flag: dict[str, bool]) -> Callable[..., Any]:
    """``fn`` with ``flag["on"]`` set while it runs."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        flag["on"] = True
        try:
            return fn(*args, **kwargs)
        finally:
            flag["on"] = False

    return wrapped


def capture_auto(records: list[dict[str, Any]], run_seed: int) -> Any:
    """A stand-in for ``pipelines.run.evaluate_auto`` that also records, for each test draw whose support
    splits, the per-unit cross-validation losses the ``auto`` choice compared and every candidate's true
    score (read after the choice, as the ``auto`` row reads it)."""
    from core import evaluation

    def recording(problem, model, methods, sites, rows, auto, **grid):
        seen: list[tuple[str, int, int, dict]] = []
        out = evaluation.evaluate_auto(problem, model, methods, sites, rows, auto, **grid,
                                       on_choice=lambda site, k, d, choices: seen.append((site.site_id, k, d, choices)))
        headline = rows[rows["metric"] == problem.headline].set_index(["site", "method", "shots", "steps", "draw"])
        sign = 1.0 if problem.higher_is_better else -1.0
        for site, k, d, choices in seen:
            for s, choice in choices.items():
                if not choice.fold_sizes:
                    continue  # the support did not split: the default, no evidence to re-score
                records.append(dict(
                    seed=run_seed, site=site, shots=k, steps=s, draw=d,
                    default=auto.default_by_steps.get(s, auto.default), auto=choice.name,
                    fold_sizes=list(choice.fold_sizes),
                    cv={n: [round(x, 6) for x in v] for n, v in choice.unit_losses.items()},
                    true={n: sign * float(headline.loc[(site, n, k, s, d), "value"]) for n in choice.unit_losses}))
        return out

    return recording


def interval(values: Sequence[float], digits: int) -> str:
    """Mean and 95% interval as the benchmarks' tables print them (``core.metrics.mean_ci95``)."""
    from core.metrics import mean_ci95

    m, lo, hi = mean_ci95(values)
    star = "*" if hi > lo and (lo > 0 or hi < 0) else ""  # one value (or all equal) proves nothing
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{star}"


def decoupled(cell: list[dict[str, Any]], picks: list[str]) -> list[float]:
    """Each draw's pick scored on the OTHER draws of its seed and site (mean gain over ``fedavg+ft`` there):
    the choice's evidence and the rows that score it made independent. A draw's scored rows are the site's rows
    outside its support, so on a small site a support that favours a start leaves rows that disfavour it; with
    0 steps (no adaptation) this scores the choice on rows drawn independently of its evidence."""
    out = []
    for i, (r, pick) in enumerate(zip(cell, picks)):
        others = [o["true"][pick] - o["true"]["fedavg+ft"] for j, o in enumerate(cell)
                  if j != i and o["seed"] == r["seed"] and o["site"] == r["site"] and pick in o["true"]]
        if others:
            out.append(sum(others) / len(others))
    return out


def worst_site(cell: list[dict[str, Any]], gains: list[float]) -> tuple[str, list[float]]:
    by_site: dict[str, list[float]] = {}
    for r, g in zip(cell, gains):
        by_site.setdefault(r["site"], []).append(g)
    worst = min(by_site, key=lambda s: sum(by_site[s]) / len(by_site[s]))
    return worst, by_site[worst]


def table(records: list[dict[str, Any]], digits: int) -> list[str]:
    lines = ["| steps | k | rule | left `fedavg+ft` | all test sites (draws that split) | worst test site "
             "| decoupled: all | decoupled: worst test site |",
             "|---|---|---|---|---|---|---|---|"]
    for steps in sorted({r["steps"] for r in records}):
        for k in sorted({r["shots"] for r in records}):
            cell = [r for r in records if r["steps"] == steps and r["shots"] == k]
            if not cell:
                continue
            for rule in RULES:
                picks = [r["rules"][rule] for r in cell]
                gains = [r["true"][p] - r["true"]["fedavg+ft"] for r, p in zip(cell, picks)]
                worst, of_worst = worst_site(cell, gains)
                left = sum(p != "fedavg+ft" for p in picks) / len(picks)
                line = f"| {steps} | {k} | {rule} | {left:.0%} | {interval(gains, digits)} | {worst}: {interval(of_worst, digits)} |"
                apart = decoupled(cell, picks)
                if len(apart) == len(cell):
                    worst, of_worst = worst_site(cell, apart)
                    line += f" {interval(apart, digits)} | {worst}: {interval(of_worst, digits)} |"
                else:
                    line += " - | - |"
                lines.append(line)
    return lines


def summary(records: list[dict[str, Any]], digits: int, rules: Sequence[str] = RULES) -> list[str]:
    """One line per rule over the cells AFTER adaptation (steps > 0, where R7 differs from R1): the mean of the
    cells' pooled gains over ``fedavg+ft``, how many (test site, k, steps) cells a rule leaves below ``fedavg+ft``
    beyond their 95% interval, and how often it left ``fedavg+ft`` or kept a start unadapted."""
    from core.metrics import mean_ci95

    lines = ["| rule (cells after s > 0 steps) | mean pooled gain | test-site cells below beyond the interval "
             "| left `fedavg+ft` | kept a start unadapted |", "|---|---|---|---|---|"]
    adapted = [r for r in records if r["steps"] > 0]
    cells: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in adapted:
        cells.setdefault((r["steps"], r["shots"]), []).append(r)
    for rule in rules:
        pooled, below, sites = [], 0, 0
        for cell in cells.values():
            gains = [r["true"][r["rules"][rule]] - r["true"]["fedavg+ft"] for r in cell]
            pooled.append(sum(gains) / len(gains))
            by_site: dict[str, list[float]] = {}
            for r, g in zip(cell, gains):
                by_site.setdefault(r["site"], []).append(g)
            for values in by_site.values():
                _, lo, hi = mean_ci95(values)
                sites += 1
                below += hi < 0 and lo < hi
        picks = [r["rules"][rule] for r in adapted]
        left = sum(p != "fedavg+ft" for p in picks) / max(1, len(picks))
        unadapted = sum(p.endswith(UNADAPTED) for p in picks) / max(1, len(picks))
        mean = sum(pooled) / len(pooled) if pooled else float("nan")
        lines.append(f"| {rule} | {mean:+.{digits}f} | {below} of {sites} | {left:.0%} | {unadapted:.0%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vertical")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="+", action="extend", default=[], help="run options over the preset, dotted KEY=VALUE")
    parser.add_argument("--digits", type=int, default=3)
    parser.add_argument("--json-out", help="also write the closing JSON line to this file (gzipped if it ends in .gz)")
    parser.add_argument("--from-json", nargs="+", help="apply the rules to the records of these JSON lines "
                                                       "(.json or .json.gz; several: their records merged, e.g. "
                                                       "one file per seed) instead of running")
    parser.add_argument("--fixed-scoring", action="store_true",
                        help="an experiment: score every held-out draw of a TEST site on one fixed half of each "
                             "class's rows, supports drawn from the other half (fixed_scoring_split), instead of on "
                             "the rows outside the draw's support; validation sites keep the protocol")
    args = parser.parse_args()
    if args.from_json:
        lines = [json.loads(read_text(path).strip().splitlines()[-1]) for path in args.from_json]
        merged = {**lines[0], "seeds": [s for line in lines for s in line.get("seeds", [])],
                  "records": [r for line in lines for r in line["records"]]}
        report(merged, args.digits, args.json_out)
        return
    home = tempfile.mkdtemp(prefix="fml-choice-rules-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
    os.environ.setdefault("FML_HOME", home)
    import torch

    import verticals
    from benchmarks.heldout_common import with_overrides
    from core.vertical import VERTICALS
    from pipelines import run as run_module
    from pipelines.config import load_preset
    from pipelines.process_setup import configure_process

    configure_process()
    torch.set_num_threads(1)
    verticals.load_all()
    spec = VERTICALS.get(args.vertical)
    records: list[dict[str, Any]] = []
    scoring_tests, score_test_sites = {"on": False}, run_module.evaluate_sites
    for seed in args.seeds:
        cfg = with_overrides(load_preset(spec, args.preset), args.set)
        cfg.seed, cfg.output_dir, cfg.tracking.experiment = seed, f"{home}/seed{seed}", "choice-rules"
        run_module.evaluate_auto = capture_auto(records, seed)
        if args.fixed_scoring:  # the problems import split_indices by name: patch where they look it up
            import core.problem

            core.problem.split_indices = split = fixed_scoring_split(seed, lambda: scoring_tests["on"])
            run_module.evaluate_sites = while_on(score_test_sites, scoring_tests)
            run_module.evaluate_auto = while_on(run_module.evaluate_auto, scoring_tests)
        run_module.run_pipeline(spec, cfg, progress=False)
        if args.fixed_scoring and not split.used:
            sys.exit(f"--fixed-scoring changed nothing for {args.vertical}: its held-out tasks are not drawn by class "
                     "through core.problem.split_indices (it applies to row-based classification verticals: fraud)")
    from benchmarks.provenance import machine

    out = {"benchmark": "choice_rules", "vertical": args.vertical, "preset": args.preset, "seeds": args.seeds,
           "overrides": args.set, "alpha": ALPHA, "fixed_scoring": args.fixed_scoring, "machine": machine(),
           "records": records}
    report(out, args.digits, args.json_out)


def report(out: dict[str, Any], digits: int, json_out: str | None) -> None:
    """Apply the rules to ``out``'s records, print the table and the closing JSON line."""
    records = out["records"]
    for r in records:
        r["rules"] = apply_rules(r["cv"], r["default"], r["fold_sizes"], ranked=out["vertical"] in RANKED)
    with_unadapted(records)
    mismatched = sum(r["rules"]["R1"] != r["auto"] for r in records)
    lines = table(records, digits)
    print("\n".join(lines))
    after = summary(records, digits)
    print("\n".join(after))
    print(f"R1 reproduces the auto row's choice on {len(records) - mismatched} of {len(records)} draws")
    out.update(draws_that_split=len(records), r1_mismatches=mismatched, table=lines, summary=after)
    line = json.dumps(out)
    if json_out:
        data = (line + "\n").encode()
        Path(json_out).write_bytes(gzip.compress(data, mtime=0) if json_out.endswith(".gz") else data)
    print(json.dumps({k: v for k, v in out.items() if k != "records"}))  # the records are in the file


def read_text(path: str) -> str:
    data = Path(path).read_bytes()
    return (gzip.decompress(data) if path.endswith(".gz") else data).decode()


if __name__ == "__main__":
    main()
