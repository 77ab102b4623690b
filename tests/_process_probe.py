"""Run by tests/test_process_state.py in a fresh interpreter (MPLBACKEND unset).

``python tests/_process_probe.py dependencies``: imports every module of the toolkit, prints the other
modules that brought in (one per line, in import order).
``python tests/_process_probe.py imports DEPS_FILE``: imports those dependencies first (their own import-time
settings are theirs), snapshots the process's global state, imports every toolkit module, and prints the
differences as JSON (``{}`` when importing the toolkit changed nothing).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "data_adapters", "verticals", "pipelines")


def ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES or name.split(".")[0] == "tests"


def import_toolkit() -> list[str]:
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            importlib.import_module(info.name)
            names.append(info.name)
    import verticals

    verticals.load_all()
    return names


def state() -> dict:
    import matplotlib
    import torch

    loggers = {"": logging.root, **{n: lg for n, lg in logging.root.manager.loggerDict.items()
                                    if isinstance(lg, logging.Logger)}}
    return {
        "warnings.filters": [repr(f) for f in warnings.filters],
        "matplotlib backend": repr(matplotlib.rcParams._get_backend_or_none()),
        "logging levels": {n: lg.level for n, lg in loggers.items()},
        "logging filters": {n: len(lg.filters) for n, lg in loggers.items()},
        "logging handlers": {n: len(lg.handlers) for n, lg in loggers.items()},
        "logging.disable": logging.root.manager.disable,
        "environment": dict(os.environ),
        "torch threads": torch.get_num_threads(),
    }


def diff(before: dict, after: dict) -> dict:
    out = {}
    for key, old in before.items():
        new = after[key]
        if isinstance(old, dict):
            changed = {k: [old.get(k), v] for k, v in new.items() if k in old and old[k] != v}
            changed.update({k: [None, v] for k, v in new.items() if k not in old and v not in (0, logging.NOTSET)})
            changed.update({k: [v, None] for k, v in old.items() if k not in new})
            if changed:
                out[key] = changed
        elif key == "warnings.filters":
            added = [f for f in new if f not in old]
            if added or len(new) != len(old):
                out[key] = {"added": added, "before": len(old), "after": len(new)}
        elif old != new:
            out[key] = [old, new]
    return out


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    if argv[0] == "dependencies":
        start = set(sys.modules)
        import_toolkit()
        print("\n".join(n for n in sys.modules if n not in start and not ours(n) and n != "__mp_main__"))
        return
    for name in Path(argv[1]).read_text().split():
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - some entries only exist as attributes of their parents
            pass
    before = state()
    import_toolkit()
    print(json.dumps(diff(before, state()), default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
