"""Table helpers shared by the vertical held-out benchmarks: pooled summaries, paired differences against the
tuned baseline, the printed (method, shots) x steps tables and the JSON rows of BENCHMARKS.md's format.

A *pool* is a set of test sites summarized together: all of them, a group of them (``group_of(site)``,
e.g. seen vs unseen imaging protocol) or one site. Each benchmark names its pool column after what it pools
(``site``, ``clinics``, ``robots``), since that name is part of its printed tables and JSON.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import pandas as pd

Pools = list[tuple[str, pd.DataFrame]]


def pools_of(frame: pd.DataFrame, everything: str, group_of: Optional[Callable[[str], str]] = None,
             per_site: bool = True) -> Pools:
    """``(pool, rows)``: all rows as ``everything``, then each ``group_of(site)`` group, then each site."""
    parts: Pools = [(everything, frame)]
    if group_of is not None:
        parts += list(frame.groupby(frame["site"].map(group_of)))
    if per_site:
        parts += list(frame.groupby("site"))
    return parts


def summarize(rows: pd.DataFrame, metric: str, pool_column: str = "site", everything: str = "ALL",
              group_of: Optional[Callable[[str], str]] = None, per_site: bool = True,
              skip_nan: bool = True) -> pd.DataFrame:
    """Mean and 95% interval per (pool, method, shots, steps) over sites x draws.

    ``skip_nan`` drops missing values before averaging (fraud, maintenance); without it a missing value
    makes its cell NaN (imaging, robotics), so that an undefined score stays visible in their tables.
    """
    from core.metrics import mean_ci95

    sub = rows[rows["metric"] == metric]
    out = []
    for pool, part in pools_of(sub, everything, group_of, per_site):
        for (method, shots, steps), grp in part.groupby(["method", "shots", "steps"]):
            values = grp["value"].tolist()
            if skip_nan:
                values = grp["value"].dropna().tolist() or [float("nan")]
            m, lo, hi = mean_ci95(values)
            out.append({pool_column: pool, "method": method, "shots": int(shots), "steps": int(steps),
                        "mean": m, "ci95": [lo, hi], "n": len(grp)})
    return pd.DataFrame.from_records(out)


def paired_by_pool(rows: pd.DataFrame, metric: str, pool_column: str, everything: str,
                   group_of: Optional[Callable[[str], str]] = None, per_site: bool = True,
                   baseline: str = "fedavg+ft") -> pd.DataFrame:
    """Each FML algorithm minus the tuned baseline on the SAME draws, per (pool, method, shots, steps).

    Like ``core.evaluation.paired_differences`` (same ``mean_diff`` / ``ci95_low`` / ``ci95_high``
    columns), but over pools that may group sites, which needs the per-draw differences.
    """
    from core.metrics import mean_ci95

    sub = rows[rows["metric"] == metric]
    keys = ["site", "shots", "steps", "draw"]
    base = sub[sub["method"] == baseline].set_index(keys)["value"]
    out = []
    for method in sorted(set(sub["method"]) - {baseline, "fedavg", "local"}):
        diff = (sub[sub["method"] == method].set_index(keys)["value"] - base).dropna().reset_index()
        for pool, part in pools_of(diff, everything, group_of, per_site):
            for (shots, steps), grp in part.groupby(["shots", "steps"]):
                m, lo, hi = mean_ci95(grp["value"].tolist())
                out.append({pool_column: pool, "method": method, "shots": int(shots), "steps": int(steps),
                            "mean_diff": m, "ci95_low": lo, "ci95_high": hi})
    return pd.DataFrame.from_records(out)


def by_steps(frame: pd.DataFrame, index: Sequence[str], values: str) -> pd.DataFrame:
    """One row per ``index`` value, one column per adaptation steps (the layout of every printed table)."""
    return frame.pivot_table(index=list(index), columns="steps", values=values, aggfunc="first").reset_index()


def cell_table(frame: pd.DataFrame, digits: int = 3, index: Sequence[str] = ("method", "shots")) -> pd.DataFrame:
    """``mean [lo, hi]`` cells of a ``summarize`` frame by steps."""
    fmt = f"{{:.{digits}f}} [{{:.{digits}f}}, {{:.{digits}f}}]"
    cells = frame.assign(cell=frame.apply(lambda r: fmt.format(r["mean"], *r["ci95"]), axis=1))
    return by_steps(cells, index, "cell")


def diff_cells(paired: pd.DataFrame, digits: int, star: bool = False) -> pd.Series:
    """Signed ``+d [lo, hi]`` cells of a paired-differences frame; ``star`` marks intervals that exclude 0."""
    def cell(r: pd.Series) -> str:
        text = f"{r['mean_diff']:+.{digits}f} [{r['ci95_low']:+.{digits}f}, {r['ci95_high']:+.{digits}f}]"
        return text + ("*" if star and (r["ci95_low"] > 0 or r["ci95_high"] < 0) else "")

    return paired.apply(cell, axis=1)


def json_rows(summary: pd.DataFrame, pool_column: str, digits: int) -> list[dict]:
    """The ``rows`` of BENCHMARKS.md's vertical JSON, each also naming its pool."""
    return [{"method": r["method"], "shots": r["shots"], "steps": r["steps"], pool_column: r[pool_column],
             "mean": round(r["mean"], digits), "ci95": [round(r["ci95"][0], digits), round(r["ci95"][1], digits)]}
            for _, r in summary.iterrows()]


def json_paired(paired: pd.DataFrame, pool_column: str, digits: int) -> list[dict]:
    """The ``paired_vs_fedavg_ft`` list of the JSON (empty when nothing was paired)."""
    return [{"method": r["method"], "shots": int(r["shots"]), "steps": int(r["steps"]), pool_column: r[pool_column],
             "mean_diff": round(r["mean_diff"], digits),
             "ci95": [round(r["ci95_low"], digits), round(r["ci95_high"], digits)]}
            for _, r in paired.iterrows()]


def print_site_report(rows: pd.DataFrame, chosen: pd.DataFrame, metric: str, *, heading: Callable[[str], str],
                      paired_heading: str, sites: str, others: Sequence[str],
                      digits: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report of the benchmarks that pool by site (fraud, maintenance): ``metric`` for all test sites
    and for each, the paired differences against fedavg+ft (``core.evaluation.paired_differences``), the
    settings chosen on validation ``sites`` and the ``others`` metrics over all test sites.

    Returns ``(summary, paired)`` of ``metric`` for the JSON; ``heading(site)`` titles each site's table.
    """
    from core.evaluation import paired_differences

    summary = summarize(rows, metric)
    for site in ["ALL", *sorted(set(rows["site"]))]:
        print(f"\n{heading(site)}")
        print(cell_table(summary[summary["site"] == site], digits=digits).to_string(index=False))
    paired = paired_differences(rows, metric)
    if not paired.empty:
        paired["diff"] = diff_cells(paired, digits=digits)
        print(f"\n{paired_heading}")
        print(by_steps(paired, ["site", "method", "shots"], "diff").to_string(index=False))
    print(f"\nAdaptation settings chosen on validation {sites}")
    print(chosen.to_string(index=False))
    for other_metric in others:
        other = summarize(rows, other_metric)
        print(f"\n{other_metric} [95% CI], all test {sites}")
        print(cell_table(other[other["site"] == "ALL"], digits=digits).to_string(index=False))
    return summary, paired
