"""The vehicle-insurance claims data of the fraud vertical: where the real file is, and a GENERATED
stand-in with the same columns for fresh clones that do not have it.

Real data: ``fraud_oracle.csv`` (15,420 claims, label ``FraudFound_P``, see ``SOURCE.md`` beside it),
found at ``$FML_FRAUD_DATA`` (the file), else ``$FML_DATA_DIR/vehicle_insurance_fraud/fraud_oracle.csv``,
else ``<repo>/../shared/data/vehicle_insurance_fraud/fraud_oracle.csv`` (resolved from this file, not
the working directory).

Generated data (:func:`synthetic_claims`): deterministic claims with the real file's main columns and
site sizes / fraud rates like the real makes. Fraud depends on a pattern shared by all makes plus a
make-specific pattern (strong for ``Accura``), so there is something to learn across sites and
something to adapt per site. It is NOT the real data and its numbers say nothing about real fraud.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import pandas as pd

from data_adapters.sources import locate, warn_generated
from data_adapters.tabular import TabularData
from data_adapters.tabular_io import category_strings

log = logging.getLogger(__name__)

REAL_RELATIVE = Path("vehicle_insurance_fraud") / "fraud_oracle.csv"
SYNTHETIC_LABEL = "generated synthetic claims"

#: make -> (claims, fraud rate), like the real file's makes.
MAKES = {
    "Pontiac": (3837, 0.056), "Toyota": (3121, 0.060), "Honda": (2801, 0.064), "Mazda": (2354, 0.052),
    "Chevrolet": (1681, 0.056), "Accura": (472, 0.125), "Ford": (450, 0.073), "VW": (283, 0.028),
    "Dodge": (109, 0.018), "Saab": (108, 0.102), "Mercury": (83, 0.072), "Saturn": (58, 0.103),
    "Nisson": (30, 0.033), "BMW": (15, 0.067), "Jaguar": (6, 0.0), "Porche": (5, 0.0), "Mecedes": (4, 0.25),
    "Ferrari": (2, 0.0), "Lexus": (1, 0.0),
}

#: categorical column -> values (as in the real file).
CATEGORIES = {
    "Month": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
    "AccidentArea": ["Urban", "Rural"],
    "Sex": ["Male", "Female"],
    "MaritalStatus": ["Married", "Single", "Divorced", "Widow"],
    "Fault": ["Policy Holder", "Third Party"],
    "VehicleCategory": ["Sedan", "Sport", "Utility"],
    "BasePolicy": ["Collision", "Liability", "All Perils"],
    "VehiclePrice": ["less than 20000", "20000 to 29000", "30000 to 39000", "40000 to 59000",
                     "60000 to 69000", "more than 69000"],
    "AgeOfVehicle": ["new", "2 years", "3 years", "4 years", "5 years", "6 years", "7 years", "more than 7"],
    "PastNumberOfClaims": ["none", "1", "2 to 4", "more than 4"],
    "PoliceReportFiled": ["No", "Yes"],
    "WitnessPresent": ["No", "Yes"],
    "AgentType": ["External", "Internal"],
    "AddressChange_Claim": ["no change", "under 6 months", "1 year", "2 to 3 years", "4 to 8 years"],
}


@dataclass
class FraudData(TabularData):
    """Data options of the fraud vertical (defaults: the vehicle-insurance claims file, sites by Make). With
    ``path`` set to another table, the claims file's id column and named makes are dropped when the table
    has no such column or sites (:func:`without_claims_defaults`)."""

    path: Optional[str] = None
    """Claims file; unset = $FML_FRAUD_DATA, else $FML_DATA_DIR/vehicle_insurance_fraud/fraud_oracle.csv,
    else ../shared/data/... from the repo root; if that file is absent, generated synthetic claims."""
    site_column: str = "Make"
    """Column naming a row's institution (Make: 19 car makes; RepNumber: 16 claim handlers)."""
    label_column: str = "FraudFound_P"
    """Binary fraud label column."""
    id_columns: list[str] = field(default_factory=lambda: ["PolicyNumber"])
    """Identifier columns, dropped."""
    test_sites: list[str] = field(default_factory=lambda: ["Accura", "Ford", "Saab"])
    """Held-out test institutions by name (set [] when sites are not makes)."""
    validation_sites: list[str] = field(default_factory=lambda: ["Chevrolet"])
    """Validation institutions by name (set [] when sites are not makes)."""
    synthetic: bool = False
    """Use the generated synthetic claims even when the real file exists."""
    synthetic_seed: int = 0
    """Seed of the generated claims (fixed: the generated file is the same on every machine)."""

    DATASET_OPTIONS: ClassVar[tuple[str, ...]] = (*TabularData.DATASET_OPTIONS, "synthetic", "synthetic_seed")


def without_claims_defaults(cfg: FraudData, frame: pd.DataFrame, source: str) -> FraudData:
    """``cfg`` without the defaults that belong to the claims file (id column ``PolicyNumber``, the named
    test/validation makes) where ``frame`` -- another table -- has no such column or sites; said in a log line."""
    import dataclasses

    defaults = FraudData()
    changes: dict[str, Any] = {}
    if cfg.id_columns == defaults.id_columns and not set(cfg.id_columns) <= set(frame.columns):
        changes["id_columns"] = []
    if cfg.site_column in frame.columns:
        sites = set(category_strings(frame[cfg.site_column]).dropna())
        for name in ("test_sites", "validation_sites"):
            if getattr(cfg, name) == getattr(defaults, name) and not set(getattr(cfg, name)) <= sites:
                changes[name] = []
    if changes:
        log.warning("%s is not the claims file: dropping its defaults %s (sites are drawn with the seed)", source,
                    ", ".join(f"{k}={getattr(cfg, k)}" for k in changes))
    return dataclasses.replace(cfg, **changes)


def default_real_path() -> Path:
    """Where the real claims file is expected (env vars first, then ``<repo>/../shared/data``)."""
    return locate(REAL_RELATIVE, "FML_FRAUD_DATA")


def resolve_claims(cfg: FraudData) -> tuple[Path | pd.DataFrame, str]:
    """``(file or generated frame, label for messages)``. An explicit ``path`` must exist (no fallback)."""
    if cfg.path:
        path = Path(cfg.path)
        if not path.exists():
            raise FileNotFoundError(f"data file {path} does not exist (data.path); fix the path or unset it")
        return path, str(path)
    real = default_real_path()
    if not cfg.synthetic and real.exists():
        return real, str(real)
    if not cfg.synthetic:
        warn_generated("vehicle-insurance claims", real, SYNTHETIC_LABEL,
                       "Set FML_FRAUD_DATA (the file) or FML_DATA_DIR, or pass --data.path.")
    return synthetic_claims(cfg.synthetic_seed), f"<{SYNTHETIC_LABEL}, seed {cfg.synthetic_seed}>"


def _choice(rng: np.random.Generator, values: list[str], n: int, tilt: np.ndarray) -> np.ndarray:
    p = np.exp(tilt[: len(values)])
    return rng.choice(np.array(values, dtype=object), size=n, p=p / p.sum())


def synthetic_claims(seed: int = 0, makes: Optional[dict[str, tuple[int, float]]] = None) -> pd.DataFrame:
    """Generated claims with the real file's main columns (deterministic in ``seed``).

    Args:
        seed: seed of the generator.
        makes: ``{make: (claims, fraud rate)}``; default :data:`MAKES`.

    Returns:
        A frame with ``PolicyNumber``, ``Make``, ``FraudFound_P``, numeric columns (``Age``, ``Deductible``,
        ``DriverRating``, ``RepNumber``, ``Year``) and the categorical columns of :data:`CATEGORIES`.
        Each make has exactly ``round(claims * rate)`` frauds.
    """
    rng = np.random.default_rng(seed)
    makes = makes or MAKES
    shared = {c: rng.normal(0, 0.8, len(v)) for c, v in CATEGORIES.items()}  # global fraud pattern
    shared["Fault"] = np.array([1.5, -1.5])
    shared["PastNumberOfClaims"] = np.array([0.8, 0.2, -0.3, -0.6])
    frames, start = [], 1
    for m_i, (make, (n, rate)) in enumerate(makes.items()):
        mrng = np.random.default_rng([seed, m_i])
        strength = 2.0 if make == "Accura" else 0.6
        cols = {c: _choice(mrng, v, n, mrng.normal(0, 0.5, len(v))) for c, v in CATEGORIES.items()}
        age = np.clip(mrng.normal(40, 12, n).round(), 16, 80)
        age[mrng.random(n) < 0.02] = 0
        num = {"Age": age.astype(int), "Deductible": mrng.choice([300, 400, 500, 700], n, p=[.02, .95, .02, .01]),
               "DriverRating": mrng.integers(1, 5, n), "RepNumber": mrng.integers(1, 17, n),
               "Year": mrng.choice([1994, 1995, 1996], n, p=[.4, .35, .25])}
        score = -0.03 * (num["Age"] - 40) + 0.3 * (num["Deductible"] > 400)
        for c, v in CATEGORIES.items():
            own = strength * mrng.normal(0, 1, len(v))  # this make's own fraud pattern
            pos = {val: i for i, val in enumerate(v)}
            idx = np.array([pos[x] for x in cols[c]])
            score = score + shared[c][idx] + own[idx]
        k = int(round(n * rate))
        noisy = score + mrng.gumbel(0, 2.0, n)
        label = np.zeros(n, dtype=np.int64)
        label[np.argsort(-noisy)[:k]] = 1
        frame = pd.DataFrame({"PolicyNumber": np.arange(start, start + n), "Make": make, **cols, **num,
                              "FraudFound_P": label})
        frames.append(frame)
        start += n
    df = pd.concat(frames, ignore_index=True)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
