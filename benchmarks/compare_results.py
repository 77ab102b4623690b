"""Two held-out benchmark JSON lines side by side: each method's mean headline per shots at one steps count,
and the difference (second - first). For settings measured as separate runs of the same benchmark and seeds
(e.g. uniform vs ``--set fed.sampler=diversity fed.weighting=quality``).

    python benchmarks/compare_results.py benchmarks/results/fraud_full.json \
        benchmarks/results/fraud_full_diversity_quality.json --steps 5

Prints a markdown table (means over the seeds' sites and draws; the per-run intervals are in each JSON).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro
from tyro.conf import Positional


@dataclass
class Config:
    first: Positional[Path]
    """The reference run's JSON (a file holding the benchmark's JSON line)."""
    second: Positional[Path]
    """The compared run's JSON."""
    steps: int = 5
    """Adaptation steps of the compared cells (non-adapting rows use their 0-steps cell)."""


def means(path: Path) -> dict[tuple[str, int, int], float]:
    return {(r["method"], r["shots"], r["steps"]): r["mean"] for r in json.loads(path.read_text())["rows"]}


def main(cfg: Config) -> str:
    a, b = means(cfg.first), means(cfg.second)
    shots = sorted({k[1] for k in a})
    methods = list(dict.fromkeys(k[0] for k in a))
    lines = [f"| method ({cfg.steps} steps) | " + " | ".join(f"k={k}: first, second, diff" for k in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for m in methods:
        cells = []
        for k in shots:
            key = (m, k, cfg.steps) if (m, k, cfg.steps) in a else (m, k, 0)
            if key in a and key in b:
                cells.append(f"{a[key]:.3f}, {b[key]:.3f}, {b[key] - a[key]:+.3f}")
            else:
                cells.append("")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main(tyro.cli(Config))
