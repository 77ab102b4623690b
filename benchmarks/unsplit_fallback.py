"""What the `ensemble` would give a site whose support cannot be split, read from the committed lines' own rows.

    python benchmarks/unsplit_fallback.py benchmarks/results/*.json --page verticals/*.md

A support with one example of a class cannot be cross-validated, so ``auto`` gives it the validated default: with
fewer than 4 validation sites (every fraud and imaging preset) that is ``fedavg+ft``, and ``auto`` equals it in
every cell at those shots. The alternative measured here is to hedge instead: the `ensemble` (the bundle's starts
each adapted, their outputs averaged), whose rows every line that has them already holds on the same draws -- so
no rerun is needed to see what that fallback would give. Per line and shots count whose validation supports cannot
be split (``fallback_defaults``), over its (test site or group, steps) cells: how many are beyond `fedavg+ft`'s
95% interval either way (those below listed), the pooled difference's range over steps counts, and the largest
shortfall against the best single start of the same cell (issue 13's imaging target allows 0.01 AUROC). A closing
line counts the cells below, unadapted and after adapting, and names the lines that hold them, so prose need not.
POSITIVE = better, intervals over seeds x draws, as in the other generated tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from where_fml_helps import (ALL_POOLS, cell, direction_and_digits, label, one_table_main, pool_key, several, signed,
                             vertical_benches)

START, END = "<!-- unsplit-fallback:start -->", "<!-- unsplit-fallback:end -->"
ENSEMBLE, BASELINE, AUTO = "ensemble", "fedavg+ft", "auto"


def unsplittable_shots(bench: dict[str, Any]) -> list[int]:
    """The shots counts whose validation supports could not be split, on any seed (the site gets the default)."""
    return sorted({int(k) for v in (bench.get("fallback_defaults") or {}).values()
                   for k in v.get("validation_choice_by_shots", {})})


def line_row(bench: dict[str, Any], shots: int) -> tuple[str, int, list[int]]:
    """The table's row of ``bench`` at ``shots``, its number of cells, and the steps count of each one below
    `fedavg+ft`."""
    lower, digits = direction_and_digits(bench)
    paired = [p for p in bench["paired_vs_fedavg_ft"] if p["shots"] == shots]
    # the best single start of each cell: every method's paired mean (fedavg+ft itself is 0), not auto or ensemble
    best: dict[tuple, tuple[float, str]] = {}
    for p in paired:
        if p["method"] not in (AUTO, ENSEMBLE):
            key = (p[pool_key(p)], p["steps"])
            gain = signed(p, lower)[0]
            if key not in best or gain > best[key][0]:
                best[key] = (gain, p["method"])
    named: dict[tuple, tuple[dict, list[str]]] = {}  # a group of one site (imaging's unseen protocol) is that site
    for p in paired:
        if p["method"] == ENSEMBLE and p[pool_key(p)] not in ALL_POOLS:
            key = (p["steps"], p["mean_diff"], *p["ci95"])
            named.setdefault(key, (p, []))[1].append(p[pool_key(p)])
    gains = [(p, names, signed(p, lower)) for p, names in named.values()]
    better = [g for g in gains if g[2][1] > 0]
    worse = sorted((g for g in gains if g[2][2] < 0), key=lambda g: g[2][0])
    listed = several("; ".join(f"{' = '.join(names)}, {p['steps']} steps: {cell(g, digits)}" for p, names, g in worse))
    pooled = [signed(p, lower)[0] for p in paired if p["method"] == ENSEMBLE and p[pool_key(p)] in ALL_POOLS]
    short = [(max(0.0, best[(names[0], p["steps"])][0]) - g[0], names, p["steps"], best[(names[0], p["steps"])][1])
             for p, names, g in gains if (names[0], p["steps"]) in best]
    gap, names, steps, method = max(short, key=lambda s: s[0]) if short else (0.0, ["-"], 0, "-")
    shortfall = (f"{gap:.{digits}f} ({' = '.join(names)}, {steps} steps, `{method}`)" if gap > 0 else "none")
    span = f"{min(pooled):+.{digits}f} to {max(pooled):+.{digits}f}" if pooled else "-"
    return (f"| {label(bench)} | {shots} | {len(gains)} | {len(better)} | {listed or 'none'} | {span} | "
            f"{shortfall} |"), len(gains), [p["steps"] for p, _, _ in worse]


def table(files: list[Path]) -> str:
    lines = ["| line | k (cannot split) | `ensemble` cells (site or group x steps) | beyond `fedavg+ft`'s interval: "
             "better | beyond it: worse (site or group, steps: difference [interval]) | pooled, over steps counts | "
             "largest shortfall against the cell's best single start |",
             "|---|---|---|---|---|---|---|"]
    cells, below = 0, {}  # below: line label -> steps counts of its cells below fedavg+ft
    for bench in vertical_benches(files):
        if not any(p["method"] == ENSEMBLE for p in bench["paired_vs_fedavg_ft"]):
            continue
        for k in unsplittable_shots(bench):
            row, n, steps = line_row(bench, k)
            lines.append(row)
            cells += n
            if steps:
                below.setdefault(label(bench), []).extend(steps)
    return "\n".join(lines) + "\n\n" + closing_line(cells, below)


def closing_line(cells: int, below: dict[str, list[int]]) -> str:
    """How many of the table's cells are below `fedavg+ft`, unadapted and after adapting, and in which lines."""
    unadapted = sum(s == 0 for steps in below.values() for s in steps)
    adapted = {name: sum(s > 0 for s in steps) for name, steps in below.items() if any(s > 0 for s in steps)}
    where = "; ".join(f"{name}: {n}" for name, n in adapted.items())
    return (f"All lines: the `ensemble` as that fallback is below `fedavg+ft` beyond its interval in "
            f"{unadapted + sum(adapted.values())} of {cells} cells, {unadapted} of them unadapted (0 steps) and "
            f"{sum(adapted.values())} after adapting" + (f" ({where})" if where else "") + ".")


if __name__ == "__main__":
    one_table_main(__doc__, START, END, table)
