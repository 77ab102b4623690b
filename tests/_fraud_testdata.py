"""Small GENERATED tabular data for the fraud tests (column names unlike the claims file)."""
from __future__ import annotations

import numpy as np
import pandas as pd

BANKS = {"bank_a": (300, 0.12), "bank_b": (260, 0.10), "bank_c": (240, 0.15), "bank_d": (200, 0.12),
         "bank_e": (180, 0.15), "bank_tiny": (40, 0.05)}


def make_transactions(seed: int = 0, banks: dict[str, tuple[int, float]] | None = None) -> pd.DataFrame:
    """Transactions of a few banks: id ``txn_id``, site ``bank``, label ``is_fraud``, numeric ``amount``
    (with a few missing values) and ``hour``, categorical ``channel`` (``bank_e`` alone uses ``crypto``) and
    ``merchant``."""
    rng = np.random.default_rng(seed)
    frames, start = [], 0
    for i, (bank, (n, rate)) in enumerate((banks or BANKS).items()):
        channels = ["web", "pos", "atm"] + (["crypto"] if bank == "bank_e" else [])
        channel = rng.choice(channels, n)
        amount = rng.lognormal(3 + 0.2 * i, 1.0, n)
        amount[rng.random(n) < 0.05] = np.nan
        hour = rng.integers(0, 24, n)
        merchant = rng.choice([f"m{j}" for j in range(8)], n)
        score = 0.8 * (channel == "web") + 0.05 * np.nan_to_num(amount, nan=20.0) ** 0.5 + 0.3 * (hour < 6)
        score = score + rng.gumbel(0, 1.0, n)
        label = np.zeros(n, dtype=int)
        label[np.argsort(-score)[: max(int(round(n * rate)), 1)]] = 1
        frames.append(pd.DataFrame({"txn_id": np.arange(start, start + n), "bank": bank, "amount": amount,
                                    "hour": hour, "channel": channel, "merchant": merchant, "is_fraud": label}))
        start += n
    return pd.concat(frames, ignore_index=True)


#: TabularData / FraudConfig options for :func:`make_transactions` files.
COLUMNS = {"site_column": "bank", "label_column": "is_fraud", "id_columns": ["txn_id"]}
ROLES = {"test_sites": ["bank_e"], "validation_sites": ["bank_d"], "num_test": 1, "num_validation": 1,
         "train_shots": 2, "train_query": 3}
