"""Simulated operators for a single C-MAPSS fleet, and a GENERATED stand-in dataset.

C-MAPSS engines of one subset come from one simulated fleet, so a federation of operators built from
them would hold identically distributed data. :func:`apply_operator_shift` adds, per operator, the
differences real operators have (a documented SIMULATION; the raw files have none):

* sensor calibration: ``x' = m + g_s * (x - m) + b_s * sd`` where ``m`` and ``sd`` are the fleet's
  mean and standard deviation of sensor ``s`` (per operating condition when the subset has several),
  ``g_s = exp(N(0, gain_std))`` a gain and ``b_s ~ N(0, offset_std)`` an offset in fleet standard
  deviations. The gain multiplies DEVIATIONS from the fleet mean, never raw values: a 3% gain on a
  ~640 R temperature would otherwise shift it by about 40 standard deviations;
* measurement noise: ``+ n * sd * N(0, 1)`` per row, ``n = noise_std * U(0.5, 1.5)`` per operator;
* operating-regime mix (subsets with several operating conditions only): the operator flies
  condition ``c`` with relative frequency ``w_c ~ Dirichlet(regime_concentration)``; each row of
  condition ``c`` is kept with probability ``w_c / max(w)``. Cycle numbers and RUL labels are those of
  the original rows, so labels stay exact; a unit is never thinned below ``min_rows`` rows.

Constant sensors (``sd = 0``) stay constant. The fleet ``m``/``sd`` are the SIMULATOR's knowledge of
the whole source file; the learner never sees them (it fits its own federated statistics).

:func:`generate_cmapss` writes nothing and needs no download: a small exponential-degradation fleet
in C-MAPSS's 26-column format, used (with a warning) when the real files are absent, and by tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from data_adapters.cmapss_io import CMAPSS_COLUMNS


@dataclass
class OperatorShift:
    """One operator's simulated differences (see module docstring). Arrays are per sensor."""

    gain: np.ndarray
    offset: np.ndarray
    noise: float
    regime_weights: Optional[np.ndarray] = None

    def describe(self, sensors: Sequence[str]) -> dict:
        """JSON-able summary for the site's metadata."""
        out = {
            "gain": {s: round(float(g), 4) for s, g in zip(sensors, self.gain)},
            "offset_sd": {s: round(float(b), 4) for s, b in zip(sensors, self.offset)},
            "noise_sd": round(float(self.noise), 4),
        }
        if self.regime_weights is not None:
            out["regime_weights"] = [round(float(w), 4) for w in self.regime_weights]
        return out


def group_units(units: Sequence, units_per_site: int, rng: np.random.Generator) -> list[list]:
    """Shuffle units with ``rng`` and cut them into ``len(units) // units_per_site`` near-equal groups."""
    if units_per_site < 1:
        raise ValueError(f"units_per_site must be >= 1, got {units_per_site}")
    n_sites = len(units) // units_per_site
    if n_sites < 1:
        raise ValueError(f"{len(units)} units cannot fill one site of {units_per_site} units; lower units_per_site")
    order = [units[i] for i in rng.permutation(len(units))]
    return [list(part) for part in np.array_split(np.asarray(order, dtype=object), n_sites)]


def draw_shift(
    rng: np.random.Generator,
    num_sensors: int,
    num_conditions: int,
    gain_std: float,
    offset_std: float,
    noise_std: float,
    regime_concentration: float,
) -> OperatorShift:
    """Draw one operator's calibration gains/offsets, noise level and regime mix."""
    gain = np.exp(rng.normal(0.0, gain_std, num_sensors))
    offset = rng.normal(0.0, offset_std, num_sensors)
    noise = noise_std * rng.uniform(0.5, 1.5)
    weights = None
    if num_conditions > 1 and regime_concentration > 0:
        weights = rng.dirichlet(np.full(num_conditions, regime_concentration))
    return OperatorShift(gain, offset, float(noise), weights)


def apply_operator_shift(
    frame: pd.DataFrame,
    sensors: Sequence[str],
    cond: np.ndarray,
    fleet_mean: np.ndarray,
    fleet_std: np.ndarray,
    shift: OperatorShift,
    rng: np.random.Generator,
    min_rows: int,
) -> pd.DataFrame:
    """A new frame with the operator's calibration, noise and regime mix applied (input not modified).

    Args:
        frame: the operator's rows (``unit``, sensors ...), sorted by unit and cycle.
        sensors: sensor columns to shift.
        cond: condition id per row.
        fleet_mean: ``[C, F]`` fleet mean per condition and sensor (the simulator's knowledge).
        fleet_std: ``[C, F]`` fleet standard deviation per condition and sensor.
        shift: the operator's drawn differences.
        rng: draws the noise and the regime thinning.
        min_rows: rows a unit keeps at least (all of them if it has fewer).
    """
    vals = frame[list(sensors)].to_numpy(np.float64)
    m, sd = fleet_mean[cond], fleet_std[cond]
    shifted = m + shift.gain * (vals - m) + shift.offset * sd + shift.noise * sd * rng.standard_normal(vals.shape)
    out = frame.copy()
    out[list(sensors)] = shifted
    if shift.regime_weights is None:
        return out
    keep_p = (shift.regime_weights / shift.regime_weights.max())[cond]
    keep = rng.random(len(out)) < keep_p
    units = out["unit"].to_numpy()
    last = np.r_[units[1:] != units[:-1], True]
    keep |= last  # the failure (or cut) row stays
    kept_per_unit = pd.Series(keep).groupby(units).transform("sum").to_numpy()
    keep |= kept_per_unit < min_rows
    return out[keep].reset_index(drop=True)


# ------------------------------------------------------------------------------ generated fleet

#: Rough FD001 sensor means and noise levels; sensors with noise 0 are constant, as in FD001.
_BASE = np.array([518.67, 642.7, 1590.5, 1408.9, 14.62, 21.61, 553.4, 2388.1, 9065.2, 1.3, 47.54,
                  521.4, 2388.1, 8143.8, 8.442, 0.03, 393.2, 2388.0, 100.0, 38.82, 23.29])
_NOISE = np.array([0.0, 0.35, 4.0, 5.0, 0.0, 0.0, 0.5, 0.045, 4.0, 0.0, 0.15, 0.45, 0.045, 4.0,
                   0.022, 0.0, 1.0, 0.0, 0.0, 0.12, 0.07])
_SIGN = np.array([0, 1, 1, 1, 0, 0, -1, 1, 1, 0, 1, -1, 1, 1, 1, 0, 1, 0, 0, -1, -1])


def _generate_unit(unit: int, life: int, stop: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(1, stop + 1, dtype=np.float64)
    wear0 = rng.uniform(0.0, 0.15)
    power = rng.uniform(1.5, 3.0)
    health = wear0 + (1.0 - wear0) * (t / life) ** power  # 0 = new, 1 = failure
    sens = _BASE + _SIGN * 4.0 * _NOISE * health[:, None] + _NOISE * rng.standard_normal((stop, _BASE.size))
    settings = np.stack([rng.normal(0, 0.002, stop), rng.normal(0, 0.0003, stop), np.full(stop, 100.0)], 1)
    return np.column_stack([np.full(stop, unit), t, settings, np.round(sens, 4)])


def generate_cmapss(
    train_units: int, test_units: int, seed: int, min_life: int = 128, max_life: int = 362
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A GENERATED degradation fleet in C-MAPSS's format (NOT real data).

    Each unit degrades along ``health(t) = w0 + (1 - w0) (t / life)^p`` (``w0 ~ U(0, .15)``,
    ``p ~ U(1.5, 3)``, ``life ~ U{min_life..max_life}`` cycles, FD001's range by default); informative
    sensors move by 4 noise levels from new to failure, seven sensors are constant, as in FD001.

    Returns:
        ``train [rows, 26]`` (units run to failure), ``test [rows, 26]`` (units cut at 30-95% of their
        life, at least 31 cycles unless the life is shorter), ``rul [test_units]`` (true RUL at each test
        unit's last cycle).
    """
    rng = np.random.default_rng(seed)
    train = [_generate_unit(u, life, life, rng)
             for u, life in enumerate(rng.integers(min_life, max_life + 1, train_units), start=1)]
    test, rul = [], []
    for u, life in enumerate(rng.integers(min_life, max_life + 1, test_units), start=1):
        stop = int(min(life, max(31, round(life * rng.uniform(0.3, 0.95)))))
        test.append(_generate_unit(u, life, stop, rng))
        rul.append(life - stop)
    return np.concatenate(train), np.concatenate(test), np.asarray(rul, dtype=np.float64)


def write_cmapss_files(folder, subset: str, train: Optional[np.ndarray], test: np.ndarray, rul: np.ndarray) -> None:
    """Write ``train_<subset>.txt`` (unless ``train`` is None), ``test_<subset>.txt``, ``RUL_<subset>.txt``
    as C-MAPSS does (space separated)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in ((f"train_{subset}.txt", train), (f"test_{subset}.txt", test)):
        if arr is None:
            continue
        lines = [" ".join(f"{v:d}" if i < 2 else f"{v:.4f}" for i, v in
                          enumerate([int(r[0]), int(r[1]), *r[2:]])) for r in arr]
        (folder / name).write_text("\n".join(lines) + "\n")
    (folder / f"RUL_{subset}.txt").write_text("\n".join(str(int(v)) for v in rul) + "\n")


def generated_frame(values: np.ndarray) -> pd.DataFrame:
    """A C-MAPSS array as a frame with the standard column names."""
    frame = pd.DataFrame(values, columns=CMAPSS_COLUMNS)
    frame["unit"] = frame["unit"].astype(np.int64)
    return frame
