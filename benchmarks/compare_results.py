"""Two held-out benchmark JSON lines side by side: each method's mean headline per shots at one steps count,
and the difference (second - first). For settings measured as separate runs of the same benchmark and seeds
(e.g. uniform vs ``--set fed.sampler=diversity fed.weighting=quality``).

    python benchmarks/compare_results.py benchmarks/results/fraud_full.json \
        benchmarks/results/fraud_full_diversity_quality.json --steps 5

Prints a markdown table (means over the seeds' test sites and draws, or of one site / group with ``--pool``;
the per-run intervals are in each JSON). A method row only one of the runs has (e.g. an ``ensemble`` row added in a
later regeneration) is left out.
"""
from __future__ import annotations

import gzip
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
    pool: str = "all"
    """Which rows: ``all`` (every test site pooled), or one site / group as the JSON names it (e.g. ``Saab``,
    ``in-range``, ``unseen-protocol``)."""

#: The column naming a row's pool, per vertical's JSON (fraud / maintenance: site, imaging: clinics, robotics: robots).
POOL_COLUMNS = ("site", "clinics", "robots")


def means(path: Path, pool: str = "all") -> dict[tuple[str, int, int], float]:
    """Mean headline per (method, shots, steps) of the rows of ``pool`` (every test site: ``all``); ``path`` may be
    gzipped (an archived line, ``.json.gz``)."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    rows = json.loads(text.strip().splitlines()[-1])["rows"]
    def pool_of(row: dict) -> str:
        value = next((row[c] for c in POOL_COLUMNS if c in row), "all")
        return "all" if value in ("ALL", "all") else value
    out = {(r["method"], r["shots"], r["steps"]): r["mean"] for r in rows if pool_of(r) == pool}
    if not out:
        raise SystemExit(f"{path}: no rows pooled as {pool!r} (pools: {sorted({pool_of(r) for r in rows})})")
    return out


def main(cfg: Config) -> str:
    a, b = means(cfg.first, cfg.pool), means(cfg.second, cfg.pool)
    shots = sorted({k[1] for k in a})
    in_second = {k[0] for k in b}
    methods = [m for m in dict.fromkeys(k[0] for k in a) if m in in_second]  # rows one run lacks cannot be compared
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
