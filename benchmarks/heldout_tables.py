"""Table helpers shared by the vertical held-out benchmarks (headline summary and printed cells)."""
from __future__ import annotations

import pandas as pd


def summarize(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and 95% interval per (site, method, shots, steps), ``site = ALL`` pooling the test sites."""
    from core.metrics import mean_ci95

    sub = rows[rows["metric"] == metric]
    out = []
    for site, part in [("ALL", sub), *sub.groupby("site")]:
        for (method, shots, steps), grp in part.groupby(["method", "shots", "steps"]):
            m, lo, hi = mean_ci95(grp["value"].dropna().tolist() or [float("nan")])
            out.append({"site": site, "method": method, "shots": int(shots), "steps": int(steps),
                        "mean": m, "ci95": [lo, hi], "n": len(grp)})
    return pd.DataFrame.from_records(out)


def cell_table(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    fmt = f"{{:.{digits}f}} [{{:.{digits}f}}, {{:.{digits}f}}]"
    cells = frame.assign(cell=frame.apply(lambda r: fmt.format(r["mean"], *r["ci95"]), axis=1))
    return cells.pivot_table(index=["method", "shots"], columns="steps", values="cell", aggfunc="first").reset_index()
