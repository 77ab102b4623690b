"""Which round the validation operators keep: maintenance's table of checkpoint-selection signals, from JSON lines.

    python benchmarks/checkpoint_selection.py benchmarks/results/experiments/maintenance_full*_intel_xeon_2026-12-0[56].json \
        benchmarks/results/experiments/floor_cut_points_full_2026-12-06.json --page verticals/*.md

Each line is one ``maintenance_heldout.py --preset full`` run; its setting (simulation, site statistics) and its
selection signal (``eval.checkpoint_metric``, ``eval.checkpoint_draws``, ``eval.checkpoint_average``) are read from
its overrides. Cells: k = 1 engine, mean over the seeds, after 5 adaptation steps (FedAvg unadapted); the last
column is ``auto``'s distance to the ``oracle no shift`` floor per seed, the line's own oracle row. A line without
the simulation scores the same engines at other windows (its cut points are drawn without the simulation), and one
recorded before that row existed for it (2026-12-06) has none: its floor is the oracle scored at ITS windows, from
a ``floor_cut_points.py`` record among the files (without one, the cell says so instead of comparing other windows).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from where_fml_helps import one_table_main

START, END = "<!-- checkpoint-selection:start -->", "<!-- checkpoint-selection:end -->"
SETTINGS = [("data.simulate=false", "no simulation"), ("data.site_statistics=true", "site statistics"),
            ("data.offset_std=", "strong simulation")]
COLUMNS = [("FedAvg", "fedavg", 0), ("`fedavg+ft`", "fedavg+ft", 5), ("FO-MAML", "fomaml", 5),
           ("Reptile", "reptile", 5), ("`auto`", "auto", 5)]


def setting_of(overrides: list[str]) -> tuple[str, str]:
    """(setting, selection signal) named by a line's overrides."""
    setting = next((name for key, name in SETTINGS if any(o.startswith(key) for o in overrides)), "default simulation")
    opts = dict(o.split("=", 1) for o in overrides if o.startswith("eval.checkpoint_"))
    metric = opts.get("eval.checkpoint_metric", "rmse_last")
    draws = opts.get("eval.checkpoint_draws", "2")
    if int(opts.get("eval.checkpoint_average", 0)):
        return setting, f"mean of the last {opts['eval.checkpoint_average']} validated rounds"
    default = "" if opts else " (default)"
    return setting, f"`{metric}`, {draws} draws{default}"


def table(files: list[Path]) -> str:
    every = [json.loads(f.read_text().strip().splitlines()[-1]) for f in files]
    cut_points = [line for line in every if line.get("benchmark") == "floor_cut_points"]
    unsimulated_floor = (pd.Series({int(s): v["no_simulation_cuts"]["1"] for s, v in cut_points[0]["by_seed"].items()})
                         if cut_points else None)
    lines = [line for line in every if "means_by_seed" in line]
    means = [pd.DataFrame(line["means_by_seed"]).query("shots == 1") for line in lines]
    oracles = [m[m.method.str.startswith("oracle")].groupby("seed")["mean"].min() for m in means]
    order = {name: i for i, name in enumerate(["default simulation", *(n for _, n in SETTINGS)])}
    rows = []
    for line, m, own in zip(lines, means, oracles):
        setting, signal = setting_of(line["overrides"])
        cell = {method: m[(m.method == method) & (m.steps == steps)].set_index("seed")["mean"]
                for _, method, steps in COLUMNS}
        floor = own if len(own) else unsimulated_floor
        gap = ("no floor at this line's windows (pass a floor_cut_points.py record)" if floor is None else
               " / ".join(f"{g:.1f}".replace("-0.0", "0.0") for g in cell["auto"] - floor))
        rows.append((order[setting], "(default)" not in signal, setting, signal,
                     [f"{cell[method].mean():.2f}" for _, method, _ in COLUMNS], gap))
    head = ["setting", "kept by", *(name for name, _, _ in COLUMNS), "`auto` above the floor, per seed"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, _, setting, signal, cells, gap in sorted(rows, key=lambda r: r[:4]):
        out.append(f"| {setting} | {signal} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(out)


if __name__ == "__main__":
    one_table_main(__doc__, START, END, table)
