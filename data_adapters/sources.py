"""What every data adapter shares: where its data is, the GENERATED fallback, the table reader and
federated moments. An adapter is built on these four and adds only what is its own (the format's
checks, the sites, the preprocessing); roles come from :meth:`core.tasks.Federation.split`.

- :func:`locate`: a dataset's default file or folder, ``$<ADAPTER>_...`` if set, else under
  :func:`data_dir` (``$FML_DATA_DIR``, else ``<repo>/../shared/data``, resolved from this file, not the
  working directory);
- :func:`warn_generated`: the ONE warning (a :class:`GeneratedDataWarning`, prefixed ``GENERATED DATA``)
  an adapter gives when it falls back to generated data, so a fresh clone runs but no one mistakes its
  numbers for results;
- :func:`~data_adapters.tables.read_table`: CSV/TSV/Parquet with content, header and row checks;
- :func:`moments` / :func:`combine_moments`: what a site shares to fit a normalization (counts, sums,
  sums of squares, per group), and the server's element-wise sum of them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from data_adapters.tables import read_table

__all__ = ["GeneratedDataWarning", "combine_moments", "data_dir", "locate", "moments", "read_table",
           "warn_generated"]

REPO_ROOT = Path(__file__).resolve().parents[1]
MOMENT_KEYS = ("count", "sum", "sumsq")


class GeneratedDataWarning(UserWarning):
    """The run uses GENERATED data because the real data was not found: its numbers are not results."""


def data_dir() -> Path:
    """``$FML_DATA_DIR``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("FML_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def locate(relative: str | Path, env: str) -> Path:
    """``$env`` (a file or folder given directly) if set, else ``data_dir() / relative``."""
    if os.environ.get(env):
        return Path(os.environ[env])
    return data_dir() / relative


def warn_generated(dataset: str, looked_at: str | Path, using: str, remedy: str) -> None:
    """Say once, as a :class:`GeneratedDataWarning`, that ``dataset`` was not found at ``looked_at`` and
    ``using`` (a description of the generated data) replaces it; ``remedy`` says how to point at real data."""
    warnings.warn(f"GENERATED DATA ({dataset}): no data at {looked_at}; using {using}, NOT real data: its numbers "
                  f"are not results. {remedy}", GeneratedDataWarning, stacklevel=3)


def moments(values: np.ndarray, groups: Optional[np.ndarray] = None, num_groups: int = 1) -> dict[str, np.ndarray]:
    """One site's sufficient statistics of ``values`` ``[rows, F]`` (or ``[rows]``), computed on its own rows.

    Args:
        values: the site's values (float64); NaN must be removed by the caller.
        groups: group id per row ``[rows]`` (e.g. operating condition); ``None``: one group, and the
            results have no group axis.
        num_groups: ``G`` when ``groups`` is given.

    Returns:
        ``{"count", "sum", "sumsq"}``: ``[G]``, ``[G, F]``, ``[G, F]`` with groups; else a row count and
        ``[F]`` (or scalar) sums.
    """
    values = np.asarray(values, dtype=np.float64)
    if groups is None:
        return {"count": values.shape[0], "sum": values.sum(0), "sumsq": (values * values).sum(0)}
    count = np.bincount(groups, minlength=num_groups).astype(np.float64)
    total = np.zeros((num_groups, values.shape[1]))
    sumsq = np.zeros_like(total)
    np.add.at(total, groups, values)
    np.add.at(sumsq, groups, values * values)
    return {"count": count, "sum": total, "sumsq": sumsq}


def combine_moments(parts: Sequence[dict]) -> dict[str, np.ndarray]:
    """The server side: the element-wise sum of the sites' :func:`moments`, in site order (a secure sum
    would do). Raises ``ValueError`` when there is no site."""
    if not parts:
        raise ValueError("no training sites to compute normalization statistics from")
    return {k: np.sum([p[k] for p in parts], axis=0) for k in MOMENT_KEYS}
