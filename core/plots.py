"""Adaptation-curve plots (PNG): metric vs steps per shots, metric vs shots at the chosen steps."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # a Figure renders to a file without pyplot or a process-wide backend


def plot_vs_steps(summary: pd.DataFrame, metric: str, path: Path) -> Path:
    data = summary[(summary["site"] == "ALL") & (summary["metric"] == metric)]
    shots = sorted(data["shots"].unique())
    fig = Figure(figsize=(4.2 * len(shots), 3.4))
    axes = fig.subplots(1, len(shots), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], shots):
        for method, grp in data[data["shots"] == k].groupby("method"):
            grp = grp.sort_values("steps")
            if len(grp) == 1:
                ax.axhline(grp["mean"].iloc[0], ls="--", lw=1, label=method, color="grey")
                continue
            ax.plot(grp["steps"], grp["mean"], marker="o", label=method)
            ax.fill_between(grp["steps"], grp["ci95_low"], grp["ci95_high"], alpha=0.15)
        ax.set_title(f"{k} shots")
        ax.set_xlabel("adaptation steps")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_vs_shots(summary: pd.DataFrame, metric: str, steps: int, path: Path) -> Path:
    data = summary[(summary["site"] == "ALL") & (summary["metric"] == metric)]
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for method, grp in data.groupby("method"):
        sel = grp[grp["steps"] == (0 if grp["steps"].max() == 0 else steps)].sort_values("shots")
        if sel.empty:
            continue
        ax.plot(sel["shots"], sel["mean"], marker="o", label=method)
        ax.fill_between(sel["shots"], sel["ci95_low"], sel["ci95_high"], alpha=0.15)
    ax.set_xlabel("shots")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} after {steps} adaptation steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
