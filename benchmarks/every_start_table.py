"""The markdown table of ``benchmarks/every_start.py`` records: per test site and adaptation steps, `auto` (the
registered bundle's choice) and `auto-every` (the choice among every trained start), paired against `fedavg+ft`.

    python benchmarks/every_start_table.py benchmarks/results/experiments/every_start_*.json --page verticals/*.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from where_fml_helps import one_table_main  # noqa: E402

START, END = "<!-- every-start:start -->", "<!-- every-start:end -->"


def cell(value: list[float]) -> str:
    """``+0.011*``: the mean difference, starred where its 95% interval excludes 0."""
    mean, low, high = value
    return f"{mean:+.3f}" + ("\\*" if low > 0 or high < 0 else "")


def one(record: dict) -> list[str]:
    # a shots count where both rows agree in every cell (supports that cannot be split get the default) is left out
    shots = sorted({c["shots"] for c in record["cells"]}
                   - {k for k in {c["shots"] for c in record["cells"]}
                      if all(c["auto"] == c["auto-every"] for c in record["cells"] if c["shots"] == k)})
    facts = record["facts"]
    bundles = sorted({" + ".join(f["bundle"]) for f in facts.values()})
    setting = "".join(f", {o}" for o in record.get("overrides", []))  # two records of one vertical must not read alike
    lines = [f"**{record['vertical']} ({record['preset']}{setting}, seeds {', '.join(map(str, record['seeds']))})**: the bundle "
             f"{' / '.join(f'`{b}`' for b in bundles)}; every start: `{' + '.join(next(iter(facts.values()))['every'])}`. "
             f"`auto` / `auto-every` minus `fedavg+ft` (POSITIVE = better, error metrics negated; a k where the two rows "
             f"agree in every cell, a support that cannot be split getting the default, is left out):", "",
             "| test site | steps | " + " | ".join(f"k = {k}" for k in shots) + " | best single start (largest k) |",
             "|---|---|" + "---|" * len(shots) + "---|"]
    by = {(c["site"], c["shots"], c["steps"]): c for c in record["cells"]}
    sites = sorted({c["site"] for c in record["cells"]}, key=lambda s: (s != "ALL", s))
    steps = sorted({c["steps"] for c in record["cells"]})
    for site in sites:
        for s in steps:
            row = [f"{cell(by[(site, k, s)]['auto'])} / {cell(by[(site, k, s)]['auto-every'])}" for k in shots]
            best = by[(site, shots[-1], s)].get("best_single", ["-", 0.0])
            lines.append(f"| {'all (pooled)' if site == 'ALL' else site} | {s} | " + " | ".join(row)
                         + f" | {best[0]} {best[1]:+.3f} |")
    below = record["below"]
    lines += ["", f"Cells (site x k x steps, k = 1 included) below `fedavg+ft` beyond the interval: `auto` {below['auto']}, "
              f"`auto-every` {below['auto-every']}. The bundle's choice, derived from the same evidence, differs from "
              "the committed run's `auto` row on " + ", ".join(
                  f"{f['bundle_choices_differing_from_the_run']} of {f['draws']}" for f in facts.values())
              + " (seed, site, k, steps, draw) cells. Command: `" + record["command"] + "`."]
    return lines


def table(files: list[Path]) -> str:
    out: list[str] = []
    for path in files:
        record = json.loads(path.read_text().strip().splitlines()[-1])
        out += ([""] if out else []) + one(record)
    return "\n".join(out)


if __name__ == "__main__":
    one_table_main(__doc__, START, END, table)
