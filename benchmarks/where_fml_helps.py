"""The "What a new site gets" table of verticals/new_sites.md, generated from the vertical benchmarks' closing JSON lines.

Each file holds the last line a held-out benchmark printed (``--json-out``). For every vertical and shots
k, at the largest adaptation-steps count of the run, the table gives the paired difference of ``auto``
(the per-site choice a new site gets at onboarding) against the tuned ``fedavg+ft`` baseline, pooled
over all test sites and at its worst test site (or group of sites), beside the best single method.
Differences are signed so that POSITIVE = better than ``fedavg+ft`` (RMSE and MSE are negated); ``*``
marks a 95% interval (over seeds x draws) that excludes 0.

    python benchmarks/where_fml_helps.py benchmarks/results/*.json              # print the Markdown table
    python benchmarks/where_fml_helps.py benchmarks/results/*.json --page verticals/*.md   # rewrite them in place

``--page`` rewrites that table, the recipe-ablation table, the reference-gap table (each seed's distance
to a non-federated reference row, e.g. the maintenance oracle's floor) and the list of every cell where
``auto`` is below ``fedavg+ft`` beyond its interval (any test site or group, k and steps count) between their
markers, each in the one of the given pages that holds them (``--readme`` is the same option's former name).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Optional

LOWER_IS_BETTER = {"rmse_last", "rmse_all", "mse", "nasa_per_unit"}
ALL_POOLS = {"ALL", "all"}
START, END = "<!-- where-fml-helps:start -->", "<!-- where-fml-helps:end -->"
ABLATION_START, ABLATION_END = "<!-- recipe-ablation:start -->", "<!-- recipe-ablation:end -->"
GAP_START, GAP_END = "<!-- reference-gap:start -->", "<!-- reference-gap:end -->"
BELOW_START, BELOW_END = "<!-- auto-below-baseline:start -->", "<!-- auto-below-baseline:end -->"
FALSE_DISCOVERY_RATE = 0.05  # of the cells listed as below: how many of them may be chance
HIDDEN = {"local", "fedavg"}  # from scratch / not adapted: in the benchmarks' own tables


def closing_json(path: Path) -> Any:
    """A benchmark's closing JSON line, or the file as one JSON document (R1 reports are pretty-printed)."""
    text = path.read_text().strip()
    try:
        return json.loads(text.splitlines()[-1])
    except json.JSONDecodeError:
        return json.loads(text)


def vertical_benches(files: list[Path]) -> list[dict[str, Any]]:
    """The held-out benchmarks of the verticals (other reports in ``benchmarks/results/``, e.g. R1's or a
    tuning report, are skipped), so ``benchmarks/results/*.json`` can be passed as it is."""
    reports = [closing_json(f) for f in sorted(files)]
    return [b for b in reports if isinstance(b, dict) and "vertical" in b and "paired_vs_fedavg_ft" in b]


def direction_and_digits(bench: dict[str, Any]) -> tuple[bool, int]:
    """Whether the line's headline is lower-is-better, and the decimals its cells print."""
    lower = bench["headline_metric"] in LOWER_IS_BETTER
    return lower, 2 if lower or bench["headline_metric"] == "return" else 3


def pool_key(entry: dict[str, Any]) -> str:
    return next(k for k in ("site", "clinics", "robots") if k in entry)


def signed(entry: dict[str, Any], lower_is_better: bool) -> tuple[float, float, float]:
    m, (lo, hi) = entry["mean_diff"], entry["ci95"]
    gain = (-m, -hi, -lo) if lower_is_better else (m, lo, hi)
    return tuple(v + 0.0 for v in gain)  # + 0.0: no "-0.00" for an exact tie


def cell(gain: Optional[tuple[float, float, float]], digits: int) -> str:
    if gain is None:
        return "-"
    m, lo, hi = gain
    star = "*" if lo > 0 or hi < 0 else ""
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{star}"


def several(text: str) -> str:
    """A table cell holding several starred values: its stars escaped, or two of them render as emphasis."""
    return text.replace("*", "\\*")


def worst_site(cells: list[dict[str, Any]], method: str, key: str, lower: bool) -> Optional[dict[str, Any]]:
    """``method``'s cell at its worst test site or group (not a pool), or None."""
    return min((p for p in cells if p["method"] == method and p[key] not in ALL_POOLS),
               key=lambda p: signed(p, lower)[0], default=None)


def vertical_rows(bench: dict[str, Any]) -> list[str]:
    lower, digits = direction_and_digits(bench)
    paired = bench.get("paired_vs_fedavg_ft") or []
    if not paired:
        return []
    key = pool_key(paired[0])
    steps = max(p["steps"] for p in paired)
    seeds = ",".join(str(s) for s in bench.get("seeds", []))
    setting = "".join(f", {o}" for o in bench.get("overrides", []))
    out = []
    for k in sorted({p["shots"] for p in paired}):
        cells = [p for p in paired if p["shots"] == k and p["steps"] == steps]
        auto_all = next((p for p in cells if p["method"] == "auto" and p[key] in ALL_POOLS), None)
        worst = worst_site(cells, "auto", key, lower)
        singles = [p for p in cells if p["method"] not in ("auto", "ensemble") and p[key] in ALL_POOLS]
        best = max(singles, key=lambda p: signed(p, lower)[0], default=None)
        ens_all = next((p for p in cells if p["method"] == "ensemble" and p[key] in ALL_POOLS), None)
        ens_worst = worst_site(cells, "ensemble", key, lower)
        out.append(" | ".join([
            f"{bench['vertical']} ({bench['preset']}{setting}, seeds {seeds})", str(k), str(steps),
            cell(signed(auto_all, lower) if auto_all else None, digits),
            (f"{worst[key]}: " + cell(signed(worst, lower), digits)) if worst else "-",
            (f"{best['method']}: " + cell(signed(best, lower), digits)) if best else "-",
            several(cell(signed(ens_all, lower), digits) + (f"; {ens_worst[key]}: " + cell(signed(ens_worst, lower), digits)
                                                            if ens_worst else "")) if ens_all else "-",
        ]))
    return out


def by_seed(bench: dict[str, Any]) -> str:
    """``; `auto` − `fedavg+ft` by seed ...`` at the table's steps count, one value per k (lines that record it)."""
    entries = [e for e in bench.get("paired_by_seed", []) if e["method"] == "auto"]
    if not entries:
        return ""
    lower, digits = direction_and_digits(bench)
    steps = max(e["steps"] for e in entries)
    shots = sorted({e["shots"] for e in entries})
    gain = {(e["seed"], e["shots"]): (-1 if lower else 1) * e["mean_diff"] + 0.0 for e in entries if e["steps"] == steps}
    seeds = sorted({seed for seed, _ in gain})
    parts = [f"seed {seed} " + " / ".join(f"{gain[(seed, k)]:+.{digits}f}" if (seed, k) in gain else "-" for k in shots)
             for seed in seeds]
    return f"; `auto` − `fedavg+ft` by seed (k = {' / '.join(map(str, shots))}, {steps} steps): " + ", ".join(parts)


def table(files: list[Path]) -> str:
    header = ("| vertical (preset, seeds) | k | steps | `auto` − `fedavg+ft`, all test sites | `auto`, worst test "
              "site or group | best single method − `fedavg+ft` | `ensemble` − `fedavg+ft`, all test sites; worst |\n"
              "|---|---|---|---|---|---|---|")
    lines = [header]
    choices = []
    for bench in vertical_benches(files):
        lines += [f"| {row} |" for row in vertical_rows(bench)]
        if bench.get("auto_choices"):
            total = sum(bench["auto_choices"].values())
            picks = ", ".join(f"{n} {100 * c / total:.0f}%" for n, c in sorted(bench["auto_choices"].items(),
                                                                             key=lambda kv: -kv[1]))
            defaults = ", ".join(f"seed {s}: {d}" for s, d in bench.get("registered_default", {}).items())
            choices.append(f"- {bench['vertical']} ({bench['preset']}): `auto` chose {picks}; registered default "
                           f"{defaults}{by_seed(bench)}{guard_note(bench)}")
    return "\n".join(lines + [""] + choices + measured_on(vertical_benches(files)) + guarded_lines(vertical_benches(files)))


def guard_note(bench: dict[str, Any]) -> str:
    """``; onboarding's guard kept the start in ...``: of `auto`'s and `fedavg+ft`'s adapted cells, how many the
    protocol scored unadapted (``guard_kept_start``, lines scored with ``eval.guard``)."""
    kept = bench.get("guard_kept_start") or {}
    parts = [f"{kept[m][0]} of `{m}`'s {kept[m][1]}" for m in ("auto", "fedavg+ft") if m in kept]
    return f"; the divergence guard kept the start in {', '.join(parts)} adapted cells" if parts else ""


def guarded_lines(benches: list[dict[str, Any]]) -> list[str]:
    """How many lines were scored as ``fml onboard`` gives them (the divergence guard, ``eval.guard``, since
    2026-12-07) and which were not (their ``--set`` says ``eval.guard=false``; robotics: the guard only catches
    non-finite weights there, a policy's support loss is not meant to fall, so its lines are unchanged)."""
    without = [label(b) for b in benches if "eval.guard=false" in b.get("overrides", [])]
    if not without:
        return []
    return [f"- scored WITHOUT onboarding's divergence guard (measured before 2026-12-07, `eval.guard=false`): "
            f"{len(without)} of {len(benches)} lines; where the guard fires on a test site they understate what "
            f"`fml onboard` gives (`benchmarks/divergence_guard.py` measures by how much)"]


def measured_on(benches: list[dict[str, Any]]) -> list[str]:
    """One line per machine the JSON lines were measured on (``machine``, recorded since 2026-12-03)."""
    by_machine: dict[str, list[str]] = {}
    for bench in benches:
        m = bench.get("machine")
        where = (f"{m['cpu']} ({m['cpu_capability']}, {m['cores']} cores), torch {m['torch']}" +
                 "".join(f", {k}={v}" for k, v in m.get("kernel_env", {}).items()) if m else
                 "not recorded (measured before the JSON lines named their machine)")
        by_machine.setdefault(where, []).append(label(bench))
    return [f"- measured on {where}: {len(names)} of {len(benches)} lines" for where, names in sorted(by_machine.items())]


def label(bench: dict[str, Any]) -> str:
    setting = "".join(f", {o}" for o in bench.get("overrides", []))
    seeds = ",".join(str(s) for s in bench.get("seeds", []))
    return f"{bench['vertical']} ({bench['preset']}{setting}, seeds {seeds})"


def ablation(files: list[Path]) -> str:
    """Rows = initialization x recipe (and ``auto``, reference rows), columns = shots k at the largest steps
    count (reference rows: as scored, without adaptation): the pooled headline mean and, beside it, the paired
    difference against ``fedavg+ft`` (positive = better). For every benchmark run with extra settings
    (``--set``: site statistics, recipes, a stronger simulation) and the run of the same vertical and preset
    without them."""
    benches = vertical_benches(files)
    varied = {(b["vertical"], b["preset"]) for b in benches if b.get("overrides")}
    blocks = []
    for bench in sorted((b for b in benches if (b["vertical"], b["preset"]) in varied),
                        key=lambda b: (b["vertical"], b["preset"], len(b.get("overrides", [])), b.get("overrides"))):
        lower, digits = direction_and_digits(bench)
        rows = [r for r in bench["rows"] if r.get(pool_key(r)) in ALL_POOLS and r["method"] not in HIDDEN]
        paired = {(p["method"], p["shots"], p["steps"]): p for p in bench.get("paired_vs_fedavg_ft") or []
                  if p[pool_key(p)] in ALL_POOLS}
        steps = max(r["steps"] for r in rows)
        shots = sorted({r["shots"] for r in rows})
        head = f"| {label(bench)}: {bench['headline_metric']} | " + " | ".join(f"k = {k}" for k in shots) + " |"
        lines = [head, "|---|" + "---|" * len(shots)]
        for method in sorted({r["method"] for r in rows}, key=lambda m: (m != "fedavg+ft", m != "auto", m)):
            cells = []
            for k in shots:
                mine = [r for r in rows if r["method"] == method and r["shots"] == k]
                at = next((r for r in mine if r["steps"] == steps), None) or next(iter(mine), None)
                if at is None:
                    cells.append("-")
                    continue
                diff = paired.get((method, k, at["steps"]))
                full = cell(signed(diff, lower), digits) if diff else ""
                gain = f" ({full.split(' [')[0]}{'*' if full.endswith('*') else ''})" if diff else ""
                cells.append(f"{at['mean']:.{digits}f}{gain}")
            lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    note = (f"Cells: pooled mean over seeds x draws at the largest steps count (reference rows: not adapted); in "
            f"brackets the paired difference against `fedavg+ft` on the same draws, POSITIVE = better, `*` = its "
            f"95% interval excludes 0.")
    return "\n\n".join(blocks + [note]) if blocks else note


def reference_gaps(files: list[Path]) -> str:
    """Per line with a non-federated reference row and per seed (``means_by_seed``, recorded since
    2026-12-04): the reference's mean at each k, then ``auto`` and that seed's best adapted method at the
    largest steps count as ``method - reference`` in the metric's units."""
    lines = []
    for bench in vertical_benches(files):
        means = {(e["seed"], e["method"], e["shots"], e["steps"]): e["mean"] for e in bench.get("means_by_seed", [])}
        refs = sorted({m for _, m, _, _ in means if m.endswith("(non-federated)")})
        if not refs:
            continue
        lower, digits = direction_and_digits(bench)
        pick = min if lower else max
        steps = max(s for *_, s in means)
        shots = sorted({k for _, _, k, _ in means})
        methods = {m for _, m, _, _ in means} - set(refs) - HIDDEN - {"auto"}
        if not lines:
            lines = ["| line, reference | seed | " + " | ".join(f"k = {k}" for k in shots) + " |",
                     "|---|---|" + "---|" * len(shots)]
        for ref in refs:
            for seed in sorted({sd for sd, *_ in means}):
                cells = []
                for k in shots:
                    floor = means.get((seed, ref, k, 0))
                    if floor is None:
                        cells.append("-")
                        continue
                    best = pick((m for m in sorted(methods) if (seed, m, k, steps) in means),
                                key=lambda m: means[(seed, m, k, steps)], default=None)
                    parts = [f"{floor:.{digits}f}"]
                    parts += [f"`auto` {means[(seed, 'auto', k, steps)] - floor:+.{digits}f}"] if (seed, "auto", k, steps) in means else []
                    parts += [f"`{best}` {means[(seed, best, k, steps)] - floor:+.{digits}f}"] if best else []
                    cells.append("; ".join(parts))
                lines.append(f"| {label(bench)}, `{ref}` | {seed} | " + " | ".join(cells) + " |")
    note = ("Cells: the reference's mean over that seed's test sites and draws, then `auto` and the seed's best adapted "
            "method at the largest steps count as method − reference (for RMSE, positive = above the floor).")
    return "\n".join(lines + ["", note]) if lines else note


def seeds_below(bench: dict[str, Any], names: list[str], shots: int, steps: int, lower: bool) -> str:
    """``, N of S seeds`` below ``fedavg+ft`` in a site's per-seed means (``paired_by_seed_site``, recorded since
    2026-12-05): a miss on every seed is a pattern of the site, one seed's is one set of trained models. Empty
    for a pooled group or an older line."""
    entries = bench.get("paired_by_seed_site") or []
    for name in names:
        diffs = [e["mean_diff"] for e in entries
                 if e["method"] == "auto" and e["site"] == name and e["shots"] == shots and e["steps"] == steps]
        if diffs:
            return f", {sum(d > 0 if lower else d < 0 for d in diffs)} of {len(diffs)} seeds"
    return ""


def below_pvalue(gain: tuple[float, float, float]) -> float:
    """One-sided p-value that ``auto`` is below ``fedavg+ft`` in a cell, from its signed mean and 95% interval: a
    normal approximation (the intervals are Student-t over seeds x draws; taking 1.96 for their t quantile makes
    the p-value if anything too SMALL, so more cells count as real misses, not fewer)."""
    mean, lo, hi = gain
    se = (hi - lo) / (2 * 1.959964)
    if se == 0:
        return 0.0 if mean < 0 else 1.0
    return NormalDist().cdf(mean / se)


def benjamini_hochberg(pvalues: list[float], rate: float = FALSE_DISCOVERY_RATE) -> list[bool]:
    """Which of ``pvalues`` are discoveries at false-discovery rate ``rate`` (Benjamini & Hochberg 1995, scipy's
    adjusted p-values; valid for positively dependent tests, as cells sharing seeds and draws are)."""
    from scipy.stats import false_discovery_control

    return [bool(a <= rate) for a in false_discovery_control(pvalues, method="bh")]


def below_baseline(files: list[Path]) -> str:
    """Issue 13's first target checked on EVERY cell, not only the main table's steps count and worst mean: per
    line, how many (test site or group, k, steps) cells ``auto`` has, in how many it differs from ``fedavg+ft``,
    how many are beyond the 95% interval either way, and each one below (marked where it stays below after
    controlling the false-discovery rate over that line's cells); then the totals beside what chance alone would
    put below, and how many stay below when the family is every line's cells at once."""
    lines = ["| line | `auto` cells (site or group x k x steps) | differs from `fedavg+ft` | beyond its interval: "
             "better | beyond its interval: worse (site or group, k, steps: difference [interval], seeds below where "
             "recorded; \u2020 below after the line's false-discovery control) |",
             "|---|---|---|---|---|"]
    total = {"cells": 0, "differs": 0, "better": 0, "worse": 0}
    per_line = []
    for bench in vertical_benches(files):
        lower, digits = direction_and_digits(bench)
        named: dict[tuple, tuple[dict, list[str]]] = {}  # a group of one site (imaging's unseen protocol) is that site
        for p in bench.get("paired_vs_fedavg_ft") or []:
            if p["method"] == "auto" and p[pool_key(p)] not in ALL_POOLS:
                tie = p["mean_diff"] == 0 and p["ci95"] == [0, 0]  # a tie is never a duplicate: one cell per site
                key = (p["shots"], p["steps"], p["mean_diff"], *p["ci95"], p[pool_key(p)] if tie else "")
                named.setdefault(key, (p, []))[1].append(p[pool_key(p)])
        if not named:
            continue
        gains = [({"site": " = ".join(names), "shots": p["shots"], "steps": p["steps"],
                   "seeds": seeds_below(bench, names, p["shots"], p["steps"], lower)}, signed(p, lower))
                 for p, names in named.values()]
        per_line.append((bench, digits, gains))

    def discoveries(gains: list[tuple[float, float, float]]) -> set[int]:
        differing = [g for g in gains if any(v != 0 for v in g)]
        found = benjamini_hochberg([below_pvalue(g) for g in differing]) if differing else []
        return {id(g) for g, hit in zip(differing, found) if hit and g[2] < 0}

    everywhere = discoveries([g for _, _, gains in per_line for _, g in gains])  # the target's own family
    discovered = set().union(*(discoveries([g for _, g in gains]) for _, _, gains in per_line))  # each line's
    for bench, digits, gains in per_line:
        differs = [g for g in gains if any(v != 0 for v in g[1])]
        better = [g for g in gains if g[1][1] > 0]
        worse = sorted((g for g in gains if g[1][2] < 0), key=lambda g: g[1][0])
        for key, n in (("cells", gains), ("differs", differs), ("better", better), ("worse", worse)):
            total[key] += len(n)
        listed = several("; ".join(f"{p['site']}, k = {p['shots']}, {p['steps']} steps: {cell(g, digits)}{p['seeds']}"
                                   + (" \u2020" if id(g) in discovered else "") for p, g in worse))
        lines.append(f"| {label(bench)} | {len(gains)} | {len(differs)} | {len(better)} | {listed or 'none'} |")
    chance = 0.025 * total["differs"]
    share = total["worse"] / total["differs"] if total["differs"] else 0.0
    note = (f"All lines: `auto` differs from `fedavg+ft` in {total['differs']} of {total['cells']} cells; beyond its "
            f"95% interval it is better in {total['better']} and worse in {total['worse']} ({share:.1%} of the cells "
            f"where it differs). Where a cell's true difference is 0, a calibrated 95% interval lies wholly below 0 in "
            f"2.5% of runs, so chance alone would put about {chance:.0f} of these cells below; the cells share seeds "
            f"and draws (not independent), so that count is a yardstick, not a test. Controlling the false-discovery "
            f"rate at {FALSE_DISCOVERY_RATE:.0%} (Benjamini-Hochberg on each cell's one-sided p-value that `auto` is "
            f"below, from its interval) over each line's cells where it differs, {len(discovered)} stay below "
            f"(\u2020): the misses least likely to be chance; over all {total['differs']} cells at once, the family "
            f"the target speaks of, {len(everywhere)} do. POSITIVE = better (RMSE "
            f"negated), intervals over seeds x draws. \"N of S seeds\": in how many of the seeds the site's own mean "
            f"difference is below (lines from 2026-12-05 on record it): a miss on every seed is a pattern of the site, "
            f"a miss on one seed comes from one set of trained models.")
    return "\n".join(lines + ["", note])


def replace_between(page: str, start: str, end: str, text: str) -> str:
    """``page`` with the text between the ``start`` and ``end`` markers (both in it: :func:`write_tables` checks)
    replaced by ``text`` (a generated table)."""
    head, rest = page.split(start, 1)
    return head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]


def write_tables(pages: list[Path], tables: dict[tuple[str, str], str]) -> None:
    """Each table (``(start, end)`` markers -> text) written into the ONE of ``pages`` that holds its markers; every
    page is checked before any is written, so a missing or doubled marker leaves all of them as they were."""
    missing = [str(page) for page in pages if not page.is_file()]
    if missing:
        raise SystemExit(f"--page: no such page {', '.join(missing)} (give the pages that hold the tables: verticals/*.md)")
    texts = {page: page.read_text() for page in pages}
    for (start, end), text in tables.items():
        holders = [page for page, body in texts.items() if start in body and end in body]
        if len(holders) != 1:
            where = "none" if not holders else ", ".join(map(str, holders))
            raise SystemExit(f"{start} ... {end}: expected in exactly one of {', '.join(map(str, pages))}, found in {where}")
        texts[holders[0]] = replace_between(texts[holders[0]], start, end, text)
    for page, body in texts.items():
        if body != page.read_text():
            page.write_text(body)


def one_table_main(doc: str, start: str, end: str, make: Callable[[list[Path]], str]) -> None:
    """The command line of a script that generates ONE table: ``make(files)`` printed, and with ``--page`` written
    between the ``start`` and ``end`` markers of the page (of those given) that holds them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="files holding a benchmark's closing JSON line")
    parser.add_argument("--page", type=Path, nargs="+", default=[],
                        help=f"replace the text between {start} and {end} in the one of these pages that holds them")
    args = parser.parse_args()
    text = make(args.files)
    if args.page:
        write_tables(args.page, {(start, end): text})
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="files holding a benchmark's closing JSON line")
    parser.add_argument("--page", "--readme", type=Path, nargs="+", default=[], metavar="PAGE",
                        help=f"replace the text between {START} and {END} (and the recipe-ablation, reference-gap and "
                             "auto-below-baseline markers) in the one of these pages that holds each: verticals/*.md")
    args = parser.parse_args()
    text, recipes, gaps, below = table(args.files), ablation(args.files), reference_gaps(args.files), below_baseline(args.files)
    if args.page:
        write_tables(args.page, {(START, END): text, (ABLATION_START, ABLATION_END): recipes,
                                 (GAP_START, GAP_END): gaps, (BELOW_START, BELOW_END): below})
    print(text + "\n\n" + recipes + "\n\n" + gaps + "\n\n" + below)


if __name__ == "__main__":
    main()
