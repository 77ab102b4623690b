"""Re-run, on THIS machine, the held-out benchmark behind each committed JSON line, then rewrite the tables.

Full-preset rows reproduce per machine, not across CPUs (verticals/README, "Reproducing the tables on another
machine"), and a change to the method or the choice rule makes every line it touches stale: the remedy is to
regenerate all of them on one machine in one go. Each line names its command (``command``, recorded since
2026-12-03); an older line's command is rebuilt from its vertical, preset, seeds and ``--set`` overrides.

    python benchmarks/regenerate.py --dry-run                 # the commands, nothing run
    python benchmarks/regenerate.py --match robotics --jobs 2 # the robotics lines, two at a time
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: The held-out benchmark script of each vertical.
SCRIPTS = {"fraud": "fraud_heldout.py", "maintenance": "maintenance_heldout.py",
           "medical_imaging": "imaging_heldout.py", "robotics": "robotics_heldout.py", "digits": "digits_heldout.py"}


def closing_line(path: Path) -> Optional[dict]:
    """The file's last line as JSON, or None when it is not a JSON line."""
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def command_of(path: Path, line: dict) -> Optional[list[str]]:
    """The argv that writes ``path`` again (``--json-out`` pointed at it), or None when no held-out benchmark
    wrote it."""
    if line.get("command"):
        argv = shlex.split(line["command"])
    elif line.get("vertical") in SCRIPTS and line.get("preset") and "benchmark" not in line:  # not another script's
        argv = ["python", f"benchmarks/{SCRIPTS[line['vertical']]}", "--preset", line["preset"],
                "--seeds", *(str(s) for s in line.get("seeds") or [0])]
        if line.get("overrides"):
            argv += ["--set", *line["overrides"]]
    else:
        return None
    for flag, value in (("--output-dir", f"fml-output/regenerate/{path.stem}"), ("--json-out", str(path.relative_to(REPO)))):
        if flag in argv:  # a recorded output folder is replaced too: two jobs must not share one
            i = argv.index(flag)
            del argv[i:i + 2]
        argv += [flag, value]
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


def threads_of(line: dict) -> int:
    """The torch threads the line was measured with (``machine.threads``; 1, the toolkit's default, when it does not
    say): rows reproduce only with the same count, since a reduction's order follows the threads."""
    return int((line.get("machine") or {}).get("threads", 1))


def run(argv: list[str], log: Path, threads: int = 1) -> tuple[int, float]:
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "FML_NUM_THREADS": str(threads)}).returncode
    return code, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="JSON lines to regenerate (default: benchmarks/results/*.json)")
    parser.add_argument("--match", default="", help="only files whose name contains this")
    parser.add_argument("--jobs", type=int, default=1, help="benchmarks run at once (each with the torch threads its "
                        "line records: one unless it says otherwise)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--logs", type=Path, default=Path("fml-output/regenerate"), help="one log per benchmark")
    args = parser.parse_args()
    files = [f.resolve() for f in (args.files or sorted(RESULTS.glob("*.json"))) if args.match in f.name]
    todo = []
    for path in files:
        line = closing_line(path)
        argv = command_of(path, line) if line else None
        if argv is None:
            print(f"skip {path.name}: not a held-out benchmark's JSON line")
            continue
        threads = threads_of(line)
        todo.append((path, argv, threads))
        env = f"FML_NUM_THREADS={threads} " if threads != 1 else ""
        print(("" if line.get("command") else "(rebuilt) ") + env + shlex.join(["python", *argv[1:]]))
    if args.dry_run or not todo:
        return 0
    args.logs.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = list(pool.map(lambda job: (job[0], *run(job[1], args.logs / f"{job[0].stem}.log", job[2])), todo))
    failed = [p.name for p, code, _ in done if code != 0]
    for path, code, seconds in done:
        print(f"{'ok ' if code == 0 else 'FAILED'} {path.name}: {seconds / 60:.1f} min (log {args.logs / (path.stem + '.log')})")
    pages = sorted(str(p) for p in (REPO / "verticals").glob("*.md"))
    subprocess.run([sys.executable, "benchmarks/where_fml_helps.py", *sorted(str(f) for f in RESULTS.glob("*.json")),
                    "--page", *pages], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    print("tables rewritten in verticals/*.md; review `git diff` before committing")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
