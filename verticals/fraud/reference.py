"""NON-federated reference row of the fraud table: gradient boosting on the POOLED training sites.

What a fraud team would compare against if the institutions could pool their claims: scikit-learn's
``HistGradientBoostingClassifier`` fitted on every training site's rows at once (this breaks the
federated constraint; it is a reference, labelled ``(non-federated)``, never a candidate model).
It is fitted on the same preprocessed features as the MLP and is not adapted per site.

Held-out rows: for every test site, shots and draw, the model scores exactly the rows the
federated methods are scored on: ``problem.few_shot_task`` with the pipeline's generator
(:func:`core.evaluation.task_generator` seeded with the run seed, the site's position in the test
list, the shots and the draw), minus the support rows. Rows carry ``steps = 0``.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from core.evaluation import task_generator
from core.problem import Problem
from core.tasks import Site
from verticals.fraud.metrics import score_metrics

METHOD = "pooled-hgb (non-federated)"


def fit_pooled_boosting(problem: Problem, seed: int) -> HistGradientBoostingClassifier:
    """Gradient boosting on all training sites' rows pooled (NOT federated)."""
    sites = problem.federation.role("train")
    x = torch.cat([s.x for s in sites]).numpy()
    y = torch.cat([s.y for s in sites]).numpy()
    clf = HistGradientBoostingClassifier(learning_rate=0.05, max_iter=300, random_state=seed)
    return clf.fit(x, y)


def pooled_reference_rows(problem: Problem, test_sites: Sequence[Site], shots_grid: Sequence[int], draws: int,
                          seed: int) -> pd.DataFrame:
    """Long rows (site, method, shots, steps, draw, metric, value) of the pooled boosting model."""
    clf = fit_pooled_boosting(problem, seed)
    model = problem.make_model()
    records = []
    for i, site in enumerate(test_sites):
        for k in shots_grid:
            for d in range(draws):
                task = problem.few_shot_task(model, site, k, task_generator(seed, i, k, d))
                x, y = task.heldout[0], task.heldout[1]  # type: ignore[attr-defined]
                scores = clf.predict_proba(x.numpy())[:, 1]
                for name, value in score_metrics(scores, y.numpy()).items():
                    records.append({"site": site.site_id, "method": METHOD, "shots": k, "steps": 0, "draw": d,
                                    "metric": name, "value": float(value)})
    return pd.DataFrame.from_records(records)


def reference_baselines(problem: Problem, run_cfg: Any, test_sites: Sequence[Site]) -> pd.DataFrame:
    """The pipeline hook (``VerticalSpec.reference_baselines``): uses ``run_cfg.eval.shots``,
    ``run_cfg.eval.draws`` and ``run_cfg.seed``."""
    return pooled_reference_rows(problem, test_sites, list(run_cfg.eval.shots), int(run_cfg.eval.draws),
                                 int(run_cfg.seed))


__all__ = ["METHOD", "fit_pooled_boosting", "pooled_reference_rows", "reference_baselines"]
