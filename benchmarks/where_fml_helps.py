"""The README's "What a new site gets" table, generated from the vertical benchmarks' closing JSON lines.

Each file holds the last line a held-out benchmark printed (``--json-out``). For every vertical and shots
k, at the largest adaptation-steps count of the run, the table gives the paired difference of ``auto``
(the per-site choice a new site gets at onboarding) against the tuned ``fedavg+ft`` baseline, pooled
over all test sites and at its worst test site (or group of sites), beside the best single method.
Differences are signed so that POSITIVE = better than ``fedavg+ft`` (RMSE and MSE are negated); ``*``
marks a 95% interval (over seeds x draws) that excludes 0.

    python benchmarks/where_fml_helps.py benchmarks/results/*.json              # print the Markdown table
    python benchmarks/where_fml_helps.py benchmarks/results/*.json --readme README.md   # rewrite it in place
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

LOWER_IS_BETTER = {"rmse_last", "rmse_all", "mse", "nasa_per_unit"}
ALL_POOLS = {"ALL", "all"}
START, END = "<!-- where-fml-helps:start -->", "<!-- where-fml-helps:end -->"


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


def vertical_rows(bench: dict[str, Any]) -> list[str]:
    lower = bench["headline_metric"] in LOWER_IS_BETTER
    digits = 2 if lower or bench["headline_metric"] == "return" else 3
    paired = bench.get("paired_vs_fedavg_ft") or []
    if not paired:
        return []
    key = pool_key(paired[0])
    steps = max(p["steps"] for p in paired)
    seeds = ",".join(str(s) for s in bench.get("seeds", []))
    out = []
    for k in sorted({p["shots"] for p in paired}):
        cells = [p for p in paired if p["shots"] == k and p["steps"] == steps]
        auto_all = next((p for p in cells if p["method"] == "auto" and p[key] in ALL_POOLS), None)
        auto_sites = [p for p in cells if p["method"] == "auto" and p[key] not in ALL_POOLS]
        worst = min(auto_sites, key=lambda p: signed(p, lower)[0], default=None)
        singles = [p for p in cells if p["method"] != "auto" and p[key] in ALL_POOLS]
        best = max(singles, key=lambda p: signed(p, lower)[0], default=None)
        out.append(" | ".join([
            f"{bench['vertical']} ({bench['preset']}, seeds {seeds})", str(k), str(steps),
            cell(signed(auto_all, lower) if auto_all else None, digits),
            (f"{worst[key]}: " + cell(signed(worst, lower), digits)) if worst else "-",
            (f"{best['method']}: " + cell(signed(best, lower), digits)) if best else "-",
        ]))
    return out


def table(files: list[Path]) -> str:
    header = ("| vertical (preset, seeds) | k | steps | `auto` − `fedavg+ft`, all test sites | `auto`, worst test "
              "site or group | best single method − `fedavg+ft` |\n|---|---|---|---|---|---|")
    lines = [header]
    choices = []
    for f in sorted(files):
        bench = json.loads(f.read_text().strip().splitlines()[-1])
        lines += [f"| {row} |" for row in vertical_rows(bench)]
        if bench.get("auto_choices"):
            total = sum(bench["auto_choices"].values())
            picks = ", ".join(f"{n} {100 * c / total:.0f}%" for n, c in sorted(bench["auto_choices"].items(),
                                                                             key=lambda kv: -kv[1]))
            defaults = ", ".join(f"seed {s}: {d}" for s, d in bench.get("registered_default", {}).items())
            choices.append(f"- {bench['vertical']} ({bench['preset']}): `auto` chose {picks}; registered default "
                           f"{defaults}")
    return "\n".join(lines + [""] + choices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="files holding a benchmark's closing JSON line")
    parser.add_argument("--readme", type=Path, help=f"replace the text between {START} and {END} in this file")
    args = parser.parse_args()
    text = table(args.files)
    if args.readme:
        readme = args.readme.read_text()
        if START not in readme or END not in readme:
            raise SystemExit(f"{args.readme}: no {START} ... {END} markers to replace")
        head, rest = readme.split(START, 1)
        args.readme.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    print(text)


if __name__ == "__main__":
    main()
