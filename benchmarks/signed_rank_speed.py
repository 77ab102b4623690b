"""The per-site choice's p-value: ``core.signed_rank`` against SciPy's ``wilcoxon`` on the same gains.

The gains are the real ones the `auto` choice tested: every candidate's paired per-unit cross-validation gains
over ``fedavg+ft`` in a committed choice-rule record (fraud full: folds of one pair give tied losses). Prints
milliseconds per call for each, their ratio, and that every p-value is equal; the JSON line last.

    python benchmarks/signed_rank_speed.py [--record benchmarks/results/experiments/choice_rules_fraud_full.json.gz]
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.choice_rules import read_text  # noqa: E402
from core.signed_rank import signed_rank_greater  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "experiments"


@dataclass
class Config:
    record: Path = RESULTS / "choice_rules_fraud_full.json.gz"
    """A choice-rule record (``benchmarks/choice_rules.py --json-out``)."""
    samples: int = 300
    """Gain vectors timed (the first ones with at least two non-zero gains, positive on average)."""


def gain_vectors(record: Path, samples: int) -> list[np.ndarray]:
    records = json.loads(read_text(str(record)).strip().splitlines()[-1])["records"]
    out = []
    for r in records:
        base = r["cv"]["fedavg+ft"]
        for name, losses in r["cv"].items():
            gains = np.array([b - v for v, b in zip(losses, base)])
            gains = gains[gains != 0]
            if len(gains) >= 2 and gains.mean() > 0 and np.isfinite(gains).all():
                out.append(gains)
        if len(out) >= samples:
            break
    return out[:samples]


def per_call_ms(fn, vectors: list[np.ndarray]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    values = [fn(v) for v in vectors]
    return (time.perf_counter() - start) * 1e3 / len(vectors), values


def main(cfg: Config) -> dict:
    from scipy.stats import wilcoxon

    vectors = gain_vectors(cfg.record, cfg.samples)
    tied = sum(len(np.unique(np.abs(v))) < len(v) for v in vectors)
    signed_rank_greater(vectors[0])  # imports out of the timing
    wilcoxon(vectors[0], alternative="greater")
    scipy_ms, scipy_p = per_call_ms(lambda v: float(wilcoxon(v, alternative="greater").pvalue), vectors)
    fast_ms, fast_p = per_call_ms(signed_rank_greater, vectors)
    equal = all(a == b for a, b in zip(scipy_p, fast_p))
    print(f"{len(vectors)} gain vectors from {cfg.record.name} ({tied} with tied magnitudes)")
    print(f"scipy.stats.wilcoxon {scipy_ms:8.3f} ms per call")
    print(f"core.signed_rank     {fast_ms:8.3f} ms per call  ({scipy_ms / fast_ms:.0f}x faster; p-values equal: {equal})")
    result = {"benchmark": "signed_rank_speed", "record": cfg.record.name, "vectors": len(vectors), "tied": tied,
              "scipy_ms_per_call": round(scipy_ms, 4), "fast_ms_per_call": round(fast_ms, 4),
              "speedup": round(scipy_ms / fast_ms, 1), "pvalues_equal": equal}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(tyro.cli(Config))
