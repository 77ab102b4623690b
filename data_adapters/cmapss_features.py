"""Federated preprocessing of fleet frames: operating conditions, sensor normalization, sliding windows.

Normalization statistics are FEDERATED: each training site reports only per-(condition, sensor)
``count``, ``sum`` and ``sum of squares`` (:func:`data_adapters.sources.moments`); the server adds them
(:func:`data_adapters.sources.combine_moments`) and derives means, standard deviations and the constant sensors to drop
(:func:`normalization_from_moments`). The result equals the pooled statistics of the training
sites' rows, without pooling rows. Operating conditions (C-MAPSS FD002/FD004 fly six) are found the
same way: each site reports its set of rounded setting combinations, the server takes the union.

Everything fitted is kept in a JSON-able ``preprocessing`` dict saved with the model and re-applied,
unchanged, to validation, test and onboarded sites.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from core.tasks import Site
from data_adapters.cmapss_io import FleetDataError

# ------------------------------------------------------------------------------ operating conditions


def rounded_settings(frame: pd.DataFrame, settings: Sequence[str], decimals: Sequence[int]) -> np.ndarray:
    """Settings rounded per column (``decimals[i]``; missing entries default to 2), shape ``[rows, k]``."""
    if not settings:
        return np.zeros((len(frame), 0))
    dec = [decimals[i] if i < len(decimals) else 2 for i in range(len(settings))]
    vals = frame[list(settings)].to_numpy(np.float64)
    return np.stack([np.round(vals[:, i], dec[i]) + 0.0 for i in range(len(settings))], axis=1)


def site_conditions(frame: pd.DataFrame, settings: Sequence[str], decimals: Sequence[int]) -> set[tuple]:
    """What a site reports to find the fleet's operating conditions: its set of rounded setting combinations."""
    return {tuple(r) for r in rounded_settings(frame, settings, decimals).tolist()}


def fit_conditions(reports: Sequence[set[tuple]], decimals: Sequence[int]) -> dict:
    """Union of the sites' rounded setting combinations -> sorted condition centers and a distance scale."""
    centers = sorted(set().union(*reports)) if reports else []
    arr = np.asarray(centers, dtype=np.float64).reshape(len(centers), -1)
    scale = np.where(arr.std(axis=0) > 0, arr.std(axis=0), 1.0) if len(centers) else np.zeros(0)
    return {"decimals": list(decimals), "centers": arr.tolist(), "scale": np.atleast_1d(scale).tolist()}


def assign_conditions(frame: pd.DataFrame, settings: Sequence[str], conditions: dict) -> np.ndarray:
    """Condition id (index into ``conditions['centers']``) of every row: the nearest center."""
    centers = np.asarray(conditions["centers"], dtype=np.float64)
    if not settings or centers.size == 0 or centers.shape[0] == 1:
        return np.zeros(len(frame), dtype=np.int64)
    vals = rounded_settings(frame, settings, conditions["decimals"]) / np.asarray(conditions["scale"])
    dist = ((vals[:, None, :] - (centers / np.asarray(conditions["scale"]))[None]) ** 2).sum(-1)
    return dist.argmin(axis=1)


# ---------------------------------------------------------------------------- federated moments


def normalization_from_moments(moments: dict[str, np.ndarray], min_std: float) -> dict[str, np.ndarray]:
    """Mean, std per (condition, sensor) and the mask of informative sensors.

    A sensor is dropped as constant when its pooled WITHIN-condition standard deviation is below
    ``min_std`` (in the sensor's own units). A condition seen in fewer than 2 rows, or where a kept
    sensor is constant, falls back to the pooled within-condition std.
    """
    n = moments["count"][:, None]
    safe = np.maximum(n, 1.0)
    mean = moments["sum"] / safe
    within_ss = np.maximum(moments["sumsq"] - moments["sum"] ** 2 / safe, 0.0)  # per condition, sum of squares
    pooled_std = np.sqrt(within_ss.sum(0) / max(float(moments["count"].sum()), 1.0))
    std = np.sqrt(within_ss / safe)
    std = np.where((n >= 2) & (std >= min_std), std, pooled_std[None, :])
    keep = pooled_std >= min_std
    return {"mean": mean, "std": np.where(std > 0, std, 1.0), "keep": keep, "pooled_std": pooled_std}


def normalize_frame(frame: pd.DataFrame, prep: dict) -> np.ndarray:
    """Normalized kept sensors of ``frame`` with the saved preprocessing, ``[rows, F_kept]`` float32."""
    missing = [s for s in prep["sensors"] if s not in frame.columns]
    if missing:
        raise FleetDataError(f"the data lacks sensor columns {missing} that the model was trained on")
    cond = assign_conditions(frame, prep["settings"], prep["conditions"])
    mean = np.asarray(prep["mean"], dtype=np.float64)
    std = np.asarray(prep["std"], dtype=np.float64)
    vals = frame[prep["sensors"]].to_numpy(np.float64)
    return ((vals - mean[cond]) / std[cond]).astype(np.float32)


# ------------------------------------------------------------------------------------- windows


def window_ends(length: int, window: int, stride: int) -> np.ndarray:
    """Inclusive end indices of a unit's windows, anchored at its last cycle so the last window always exists."""
    if length < window:
        return np.asarray([length - 1])
    return np.arange(length - 1, window - 2, -stride)[::-1].copy()


def unit_windows(values: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """Windows ``[n, window, F]`` ending at ``ends``; a unit shorter than ``window`` is front-padded
    with its first row."""
    if values.shape[0] < window:
        pad = np.repeat(values[:1], window - values.shape[0], axis=0)
        return np.concatenate([pad, values], axis=0)[None]
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # [T-w+1, F, w]
    return np.ascontiguousarray(view[ends - window + 1].transpose(0, 2, 1))


def frame_to_site(
    site_id: str,
    frame: pd.DataFrame,
    prep: dict,
    *,
    where: str,
    truncated: bool,
    eval_cut: str,
    rng: Optional[np.random.Generator],
    metadata: Optional[dict] = None,
) -> Site:
    """Window one site's frame with the saved preprocessing.

    Returns a :class:`Site` with ``x [n, window, F]``, ``y [n]`` (RUL capped at ``rul_cap``),
    ``groups [n]`` (unit index within the site) and metadata ``units`` (original ids, by group index)
    and ``cut_rows`` (per unit, the row of its EVALUATION window: the last window for truncated units
    (``truncated`` or a per-row ``truncated`` column) or ``eval_cut="last"``, else a window end drawn
    uniformly by ``rng``, as C-MAPSS's test set is truncated).
    """
    window, stride, cap = int(prep["window"]), int(prep["stride"]), float(prep["rul_cap"])
    z = normalize_frame(frame, prep)
    xs, ys, gs, cut_rows, units = [], [], [], [], []
    offset = 0
    unit_col = frame["unit"].to_numpy()
    rul = frame["rul"].to_numpy(np.float64)
    unit_truncated = frame["truncated"].to_numpy(bool) if "truncated" in frame.columns else None
    starts = np.flatnonzero(np.r_[True, unit_col[1:] != unit_col[:-1]])
    bounds = list(zip(starts, np.r_[starts[1:], len(frame)]))
    for g, (a, b) in enumerate(bounds):
        unit = unit_col[a]
        if b - a < window and prep["short_units"] != "pad":
            raise FleetDataError(
                f"{where}: unit {unit!r} of site {site_id!r} has {b - a} cycles, fewer than the window length "
                f"{window}; lower `window`, set short_units='pad', or remove the unit"
            )
        ends = window_ends(b - a, window, stride)
        xs.append(unit_windows(z[a:b], ends, window))
        ys.append(np.minimum(rul[a:b][ends], cap))
        gs.append(np.full(len(ends), g))
        pick = len(ends) - 1
        cut_last = truncated or (unit_truncated is not None and bool(unit_truncated[a]))
        if not cut_last and eval_cut == "random" and rng is not None:
            pick = int(rng.integers(0, len(ends)))
        cut_rows.append(offset + pick)
        units.append(unit.item() if hasattr(unit, "item") else unit)
        offset += len(ends)
    if not xs:
        raise FleetDataError(f"{where}: site {site_id!r} has no units")
    meta = dict(metadata or {})
    meta.update({"units": units, "cut_rows": cut_rows, "truncated": truncated})
    return Site(
        site_id,
        torch.from_numpy(np.concatenate(xs)),
        torch.from_numpy(np.concatenate(ys).astype(np.float32)),
        groups=torch.from_numpy(np.concatenate(gs).astype(np.int64)),
        metadata=meta,
    )
