"""Site-shift report: how different each site looks from the pooled training sites.

Per site: size, label distribution (classification) or target statistics (regression), and the
cross-validated ROC-AUC of a logistic regression telling the site's inputs from the pooled training
sites' inputs (0.5 = indistinguishable: expect little gain from adaptation there). This is a
simulation-time diagnostic: it needs the sites' inputs in one process.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.tasks import Federation, Site


def _flat(site: Site, n: int, gen: np.random.Generator) -> np.ndarray:
    x = site.x.reshape(len(site), -1).float().numpy()
    if len(x) > n:
        x = x[gen.choice(len(x), n, replace=False)]
    return x


def _targets(site: Site, classification: bool) -> dict:
    y = site.y
    if classification:
        vals, counts = torch.unique(y, return_counts=True)
        return {"labels": ", ".join(f"{int(v)}:{c / len(y):.2f}" for v, c in zip(vals.tolist(), counts.tolist()))}
    yf = y.float()
    return {"labels": f"mean {float(yf.mean()):.2f} sd {float(yf.std()):.2f}"}


def site_shift_report(federation: Federation, *, seed: int = 0, max_rows: int = 600, max_sites: int = 40,
                      max_dims: int = 32) -> pd.DataFrame:
    """One row per site (test and validation sites first): role, rows, labels, domain ROC-AUC."""
    gen = np.random.default_rng(seed)
    train = federation.role("train")
    classification = not torch.is_floating_point(next(iter(federation.sites.values())).y)
    order = federation.role("test") + federation.role("validation") + train
    rows = []
    for site in order[:max_sites]:
        others = [s for s in train if s.site_id != site.site_id]
        if len(others) > max_rows:  # a big (lazy) federation: a seeded sample of sites, not every site's rows
            others = [others[i] for i in sorted(gen.choice(len(others), max_sites, replace=False))]
        auc = float("nan")
        if others and len(site) >= 6:
            per = max(1, max_rows // len(others))
            xo = np.concatenate([_flat(s, per, gen) for s in others])
            xs = _flat(site, max_rows, gen)
            x = np.concatenate([xs, xo])
            y = np.r_[np.ones(len(xs)), np.zeros(len(xo))]
            steps = [StandardScaler()]
            if x.shape[1] > max_dims:
                steps.append(PCA(n_components=max_dims, random_state=seed))
            clf = make_pipeline(*steps, LogisticRegression(max_iter=300))
            folds = int(min(3, len(xs), len(xo)))
            if folds >= 2:
                auc = float(np.mean(cross_val_score(clf, x, y, cv=folds, scoring="roc_auc")))
        rows.append({"site": site.site_id, "role": federation.role_of(site.site_id), "rows": len(site),
                     **_targets(site, classification), "domain_auroc": auc})
    return pd.DataFrame.from_records(rows)
