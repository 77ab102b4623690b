"""The official FD001 fleet onboarded with each seed's model: maintenance's per-seed table, from JSON lines.

    python benchmarks/fleet_onboarding.py benchmarks/results/maintenance_full_official_fleet*.json \
        benchmarks/results/experiments/fleet_onboarding_*.json \
        benchmarks/results/experiments/fleet_central_reference_*.json \
        --page verticals/maintenance/README.md

Each line is one ``maintenance_heldout.py --preset full --onboard-shots 5`` run on the official-fleet split; lines
without ``onboard_by_seed`` (measured before 2026-12-06, when only the registry's champion was onboarded) are
left out. A row names the line's overrides beyond the split's own (none: the full preset, with its simulated operator
shift and 300 rounds), the machine and, for an experiment record,
its file; cells are the last-window RMSE after adaptation per seed and their mean (issue 14's target: <= 13.0).
Rows are ordered by that mean; a line run with ``--onboard-candidates`` adds, right below its row, one row per
start the fleet was also forced to take. A ``fleet_central_reference.py`` line adds a **central reference** row: the
same architecture trained centrally on the same training operators, scored unadapted on the same engines (what the
model and training engines reach without federation or adaptation).
"""
from __future__ import annotations

import json
from pathlib import Path

from where_fml_helps import one_table_main

START, END = "<!-- fleet-onboarding:start -->", "<!-- fleet-onboarding:end -->"
#: Overrides that are not a setting of the row: the official-fleet split itself (every line has these) and the
#: held-out protocol's guard, which the fleet's numbers never depend on (``fml onboard`` always guards).
NOT_A_SETTING = {"data.include_test_file=false", "data.units_per_site=6", "data.test_sites=3", "eval.guard=false"}


def rows(path: Path, line: dict) -> list[tuple[float, str]]:
    """The line's onboarding (the per-site choice) and one row per start it was also FORCED to take
    (``--onboard-candidates``); for a ``fleet_central_reference.py`` line, its central fit's row."""
    settings = ", ".join(f"`{o}`" for o in line["overrides"] if o not in NOT_A_SETTING) or "the full preset (simulated shift, 300 rounds)"
    where = " ".join(line["machine"]["cpu"].replace("(R)", "").split()[:2])  # "Intel Xeon", "AMD EPYC"
    if path.parent.name == "experiments":
        where += f", experiment record `experiments/{path.name}`"
    if line.get("benchmark") == "fleet_central_reference":
        values = [line["by_seed"][s]["rmse_last"] for s in sorted(line["by_seed"], key=int)]
        mean = sum(values) / len(values)
        what = f"**central reference** (trained on the pooled training operators, scored unadapted), {settings}"
        return [(mean, f"| {what} | {where} | {' / '.join(f'{a:.2f}' for a in values)} | {mean:.2f} |")]
    by_seed = {s: line["onboard_by_seed"][s] for s in sorted(line["onboard_by_seed"], key=int)}
    forced = list(next(iter(by_seed.values())).get("candidates", {}))
    out = []
    for name, after in [(None, [v["after"] for v in by_seed.values()]),
                        *((n, [v["candidates"][n]["after"] for v in by_seed.values()]) for n in forced)]:
        mean = sum(after) / len(after)
        what = settings if name is None else f"{settings}, started from `{name}` (`--candidate {name}`)"
        out.append((mean, f"| {what} | {where} | {' / '.join(f'{a:.2f}' for a in after)} | {mean:.2f} |"))
    return out


def table(files: list[Path]) -> str:
    lines = [(f, json.loads(f.read_text().strip().splitlines()[-1])) for f in files]
    # lines by the mean of their per-site choice; a line's forced starts right below it
    rows_ = [r for group in sorted(rows(f, line) for f, line in lines
                                   if line.get("onboard_by_seed") or line.get("benchmark") == "fleet_central_reference")
             for r in group]
    head = "| training settings | machine | seed 0 / 1 / 2 after | mean |\n|---|---|---|---|"
    return "\n".join([head, *(text for _, text in rows_)])


if __name__ == "__main__":
    one_table_main(__doc__, START, END, table)
