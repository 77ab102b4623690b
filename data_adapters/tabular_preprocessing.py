"""Federated preprocessing of tabular features: no raw row leaves its site.

Each TRAINING site computes :func:`site_statistics` on its own rows and shares only aggregates: per
numeric column the count of present values, their sum and sum of squares, and the count of missing
values; per categorical column its set of category values (its vocabulary) and whether values are
missing. :func:`merge_statistics` (the server) turns these into the fitted preprocessing, a
JSON-serializable dict saved with the model:

- numeric columns: ``(x - mean) / std`` with the pooled mean and (population) standard deviation
  ``sqrt(sumsq / n - mean^2)`` (:func:`data_adapters.sources.moments`); a missing value is filled with the mean (0 after scaling) and, when any
  training site had missing values in that column, flagged by a ``<col>=<missing>`` indicator feature;
- categorical columns: one-hot over the UNION of the training sites' vocabularies plus an explicit
  ``<unknown>`` bucket (a category no training site had: new makes, new handler ids ... never crash);
  a missing value is its own category ``<missing>``; a column whose union vocabulary exceeds
  ``max_categories`` is hashed (CRC32) into ``hash_buckets`` buckets instead (no vocabulary shared).

:func:`transform` applies the saved dict to any frame (a training site, a held-out site, a new site at
onboarding) and returns float32 features in the order of ``feature_names``.

Leak check: each training site also shares, per feature column, COUNTS of positive and negative rows per
bin (numeric columns on the fitted z-scale, categorical columns per category); :func:`leak_scores` turns
the summed counts into each column's ROC-AUC for ranking the label on its own, so that a column which
encodes the label (a class code, a copy of the label) is named before any training, without pooling rows.
"""
from __future__ import annotations

import logging
import math
import zlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from data_adapters.sources import combine_moments, moments
from data_adapters.tabular_io import category_strings, numeric_column, require_columns

log = logging.getLogger(__name__)

MISSING = "<missing>"
UNKNOWN = "<unknown>"


def site_statistics(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str],
                    source: str, allow_missing: bool = True) -> dict[str, Any]:
    """The aggregates ONE site shares (computed locally, on its own rows).

    Returns:
        ``{"rows": n, "numeric": {col: {"count", "sum", "sumsq", "missing"}},
        "categorical": {col: {"vocabulary": [...], "missing": int}}}`` (JSON-able).
    """
    out: dict[str, Any] = {"rows": int(len(frame)), "numeric": {}, "categorical": {}}
    for col in numeric:
        v = numeric_column(frame[col], source, allow_missing)
        m = moments(v[~np.isnan(v)])
        out["numeric"][col] = {"count": int(m["count"]), "sum": float(m["sum"]), "sumsq": float(m["sumsq"]),
                               "missing": int(v.size - m["count"])}
    for col in categorical:
        cats = category_strings(frame[col])
        out["categorical"][col] = {"vocabulary": sorted(set(cats.dropna().tolist())),
                                   "missing": int(cats.isna().sum())}
    return out


def merge_statistics(stats: Sequence[dict[str, Any]], numeric: Sequence[str], categorical: Sequence[str], *,
                     max_categories: int = 200, hash_buckets: int = 64) -> dict[str, Any]:
    """The server side: fit the preprocessing from the sites' aggregates only.

    Args:
        stats: one :func:`site_statistics` result per training site.
        numeric: numeric feature columns.
        categorical: categorical feature columns.
        max_categories: union vocabularies larger than this are hashed instead of one-hot encoded.
        hash_buckets: buckets of a hashed column.
    """
    if not stats:
        raise ValueError("no training-site statistics to fit the preprocessing on")
    num_specs = []
    for col in numeric:
        m = combine_moments([s["numeric"][col] for s in stats])
        n, total, total_sq = int(m["count"]), float(m["sum"]), float(m["sumsq"])
        missing = sum(s["numeric"][col]["missing"] for s in stats)
        if n == 0:
            raise ValueError(f"numeric column {col!r} has no present value on any training site; drop it")
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0)
        std = math.sqrt(var) if var > 1e-12 * max(1.0, mean * mean) else 1.0
        num_specs.append({"name": col, "mean": mean, "std": std, "count": n, "missing_indicator": missing > 0})
    cat_specs = []
    for col in categorical:
        vocab = set().union(*(s["categorical"][col]["vocabulary"] for s in stats))
        if any(s["categorical"][col]["missing"] for s in stats):
            vocab.add(MISSING)
        if len(vocab) > max_categories:
            cat_specs.append({"name": col, "encoding": "hash", "buckets": int(hash_buckets)})
        else:
            cat_specs.append({"name": col, "encoding": "onehot", "vocabulary": sorted(vocab)})
    prep = {"numeric": num_specs, "categorical": cat_specs}
    prep["feature_names"] = feature_names(prep)
    prep["n_features"] = len(prep["feature_names"])
    return prep


def feature_names(prep: dict[str, Any]) -> list[str]:
    """Names of the transformed features, in column order."""
    names: list[str] = []
    for spec in prep["numeric"]:
        names.append(spec["name"])
        if spec["missing_indicator"]:
            names.append(f"{spec['name']}={MISSING}")
    for spec in prep["categorical"]:
        if spec["encoding"] == "hash":
            names += [f"{spec['name']}#hash{b}" for b in range(spec["buckets"])]
        else:
            names += [f"{spec['name']}={v}" for v in spec["vocabulary"]] + [f"{spec['name']}={UNKNOWN}"]
    return names


def numeric_feature_indices(prep: dict[str, Any]) -> tuple[int, ...]:
    """Positions of the standardized numeric columns among the transformed features (not their missing
    indicators, not one-hot columns): what per-site standardization may rescale."""
    numeric = {spec["name"] for spec in prep["numeric"]}
    return tuple(i for i, name in enumerate(prep["feature_names"]) if name in numeric)


def _bucket(value: str, buckets: int) -> int:
    return zlib.crc32(value.encode("utf-8")) % buckets


def transform(frame: pd.DataFrame, prep: dict[str, Any], source: str) -> np.ndarray:
    """Features of ``frame`` under the fitted ``prep``: float32 ``[rows, n_features]``.

    Unseen categories go to the column's ``<unknown>`` bucket (counted in a log line); missing numeric
    values in a column that had none in training are filled with the training mean.
    """
    cols = [s["name"] for s in prep["numeric"]] + [s["name"] for s in prep["categorical"]]
    require_columns(frame, cols, source, role="feature")
    parts: list[np.ndarray] = []
    for spec in prep["numeric"]:
        v = numeric_column(frame[spec["name"]], source, allow_missing=True)
        nan = np.isnan(v)
        if nan.any() and not spec["missing_indicator"]:
            log.warning("%s: column %r has %d missing value(s) but no training site had any; filled with the "
                        "training mean", source, spec["name"], int(nan.sum()))
        parts.append(np.where(nan, 0.0, (v - spec["mean"]) / spec["std"])[:, None])
        if spec["missing_indicator"]:
            parts.append(nan.astype(float)[:, None])
    for spec in prep["categorical"]:
        cats = category_strings(frame[spec["name"]]).fillna(MISSING)
        if spec["encoding"] == "hash":
            codes = cats.map(lambda c: _bucket(c, spec["buckets"])).to_numpy(dtype=np.int64)
            width = spec["buckets"]
        else:
            index = {v: i for i, v in enumerate(spec["vocabulary"])}
            width = len(index) + 1
            mapped = cats.map(index)
            unseen = mapped.isna()
            if unseen.any():
                log.info("%s: column %r: %d row(s) with categories unseen in training %s -> %s", source,
                         spec["name"], int(unseen.sum()), sorted(set(cats[unseen]))[:5], UNKNOWN)
            codes = mapped.fillna(width - 1).to_numpy(dtype=np.int64)
        onehot = np.zeros((len(frame), width))
        onehot[np.arange(len(frame)), codes] = 1.0
        parts.append(onehot)
    if not parts:
        raise ValueError(f"{source}: no feature columns to transform")
    return np.concatenate(parts, axis=1).astype(np.float32)


Z_BINS = 64  # bins of 1/8 standard deviation over [-4, 4] on the fitted scale; tails clipped
RARE = "<rare>"


def label_histograms(frame: pd.DataFrame, y: np.ndarray, prep: dict[str, Any], source: str,
                     min_category_rows: int = 5) -> dict[str, dict[str, list[int]]]:
    """ONE site's per-column label counts (computed locally): ``{col: {bin: [negatives, positives]}}``.
    Numeric values fall in ``Z_BINS`` bins of the fitted z-scale (missing values are left out); categories
    with fewer than ``min_category_rows`` rows on the site are counted together as ``<rare>``."""
    out: dict[str, dict[str, list[int]]] = {}
    y = np.asarray(y).astype(int)
    for spec in prep["numeric"]:
        v = numeric_column(frame[spec["name"]], source, allow_missing=True)
        ok = ~np.isnan(v)
        z = (v[ok] - spec["mean"]) / spec["std"]
        bins = np.clip(np.floor((z + 4.0) * Z_BINS / 8.0), 0, Z_BINS - 1).astype(int)
        counts: dict[str, list[int]] = {}
        for b, label in zip(bins.tolist(), y[ok].tolist()):
            counts.setdefault(f"{b:03d}", [0, 0])[label] += 1
        out[spec["name"]] = counts
    for spec in prep["categorical"]:
        cats = category_strings(frame[spec["name"]]).fillna(MISSING)
        sizes = cats.value_counts()
        cats = cats.where(cats.map(sizes) >= min_category_rows, RARE)
        counts = {}
        for c, label in zip(cats.tolist(), y.tolist()):
            counts.setdefault(c, [0, 0])[label] += 1
        out[spec["name"]] = counts
    return out


def _auroc(bins: list[list[int]]) -> float:
    """ROC-AUC of a score constant within each bin, bins in increasing score order (ties count half)."""
    neg_total = sum(b[0] for b in bins)
    pos_total = sum(b[1] for b in bins)
    if not neg_total or not pos_total:
        return 0.5
    below, wins = 0, 0.0
    for neg, pos in bins:
        wins += pos * (below + 0.5 * neg)
        below += neg
    return wins / (pos_total * neg_total)


def leak_scores(histograms: Sequence[dict[str, dict[str, list[int]]]], numeric: Sequence[str]) -> dict[str, float]:
    """The server side: per column, ``max(AUROC, 1 - AUROC)`` of ranking the label by that column alone over
    the training sites' summed counts (numeric columns by value; categorical ones by their positive rate,
    the best ordering a category column allows)."""
    scores = {}
    for col in histograms[0] if histograms else {}:
        total: dict[str, list[int]] = {}
        for h in histograms:
            for key, (neg, pos) in h[col].items():
                t = total.setdefault(key, [0, 0])
                t[0], t[1] = t[0] + neg, t[1] + pos
        if col in numeric:
            order = sorted(total)
        else:
            order = sorted(total, key=lambda k: total[k][1] / max(sum(total[k]), 1))
        auc = _auroc([total[k] for k in order])
        scores[col] = max(auc, 1.0 - auc)
    return scores
