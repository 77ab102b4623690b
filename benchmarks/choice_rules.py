"""Which per-site choice rule keeps every held-out site at or above ``fedavg+ft``? A diagnostic, not a
headline benchmark: it re-runs ``fml run maintenance --preset full`` per seed, reloads the registered
bundle, recomputes every candidate's cross-validation losses on each test draw's support (exactly what the
``auto`` row sees) and applies four rules to the same draws:

- ``R0``: the validated default is the anchor (the rule before this session);
- ``R1``: ``fedavg+ft`` is the anchor whenever the support splits (the rule now);
- ``R2``: the lowest mean cross-validation loss, no test;
- ``R3``: R0, then an FML pick whose mean loss is above ``fedavg+ft``'s falls back to ``fedavg+ft``.

It prints, per steps and shots, each rule's pooled paired difference against ``fedavg+ft`` (positive =
better; RMSE negated) and its worst test operator, with 95% intervals over seeds x draws. The test
operators' scores are read only to report the rules, never by a rule.

    python benchmarks/choice_rules.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_seed(seed: int, home: str) -> list[dict]:
    """Train, register and score one seed; then every candidate's CV losses on every test draw."""
    import pandas as pd
    import torch

    import verticals
    from core.choice import Candidate, unit_loss, unit_losses
    from core.evaluation import task_generator
    from core.tracking import load_meta_init
    from core.vertical import VERTICALS
    from pipelines.config import load_preset
    from pipelines.onboard import bundle_candidates
    from pipelines.run import run_pipeline

    verticals.load_all()
    spec = VERTICALS.get("maintenance")
    cfg = load_preset(spec, "full")
    cfg.seed, cfg.output_dir, cfg.tracking.experiment = seed, f"{home}/seed{seed}", "choice-rules"
    result = run_pipeline(spec, cfg, progress=False)
    rows = pd.read_parquet(Path(cfg.output_dir) / "evaluation_rows.parquet")
    rows = rows[rows.metric == "rmse_last"].set_index(["site", "method", "shots", "steps", "draw"])["value"]
    loaded = load_meta_init(f"models:/{result.registered['name']}/{result.registered['version']}")
    default = {int(k): v for k, v in loaded.info["default_by_steps"].items()}
    problem = spec.build(cfg.data, seed)
    model = problem.make_model()
    loss_fn = problem.loss_fn(model)
    candidates = bundle_candidates(loaded, None, problem.param_groups(model)["head"])
    out = []
    for i, site in enumerate(problem.federation.role("test")):
        for k in cfg.eval.shots:
            for d in range(cfg.eval.draws):
                task = problem.few_shot_task(model, site, k, task_generator(seed, i, k, d))
                folds = task.support_folds(cfg.eval.choice_folds)
                for steps in [s for s in cfg.eval.steps if s > 0]:
                    cv = {name: unit_losses(unit_loss(loss_fn), loss_fn,
                                            Candidate(name, c.params, lambda s, c=c, n=steps: c.lr_for(n)), folds,
                                            [steps])[steps] for name, c in candidates.items()}
                    true = {name: float(rows[(site.site_id, name, k, steps, d)]) for name in cv}
                    out.append(dict(seed=seed, site=site.site_id, shots=k, steps=steps, draw=d,
                                    default=default[steps], cv=cv, true=true))
    return out


def apply_rules(record: dict) -> dict[str, str]:
    from core.choice import clearly_better

    cv, default, base = record["cv"], record["default"], "fedavg+ft"
    mean = {n: sum(v) / len(v) for n, v in cv.items()}

    def anchored(anchor: str) -> str:
        better = [n for n in cv if n != anchor and clearly_better([b - a for a, b in zip(cv[n], cv[anchor])])]
        best = min(better, key=lambda n: mean[n], default=anchor)
        return best if mean[best] <= mean[anchor] else anchor

    r0 = anchored(default)
    return {"R0": r0, "R1": anchored(base), "R2": min(cv, key=lambda n: mean[n]),
            "R3": r0 if r0 == base or mean[r0] <= mean[base] else base}


def interval(values: list[float]) -> str:
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    h = 1.96 * sd / math.sqrt(n) if n > 1 else 0.0
    star = "*" if h > 0 and abs(m) > h else ""
    return f"{m:+.2f} [{m - h:+.2f}, {m + h:+.2f}]{star}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="fml-choice-rules-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
    os.environ["FML_HOME"] = home
    from pipelines.process_setup import configure_process

    configure_process()
    records = [r for seed in args.seeds for r in run_seed(seed, home)]
    print("| steps | k | rule | all test operators | worst operator |\n|---|---|---|---|---|")
    for steps in sorted({r["steps"] for r in records}):
        for k in sorted({r["shots"] for r in records}):
            cell = [r for r in records if r["steps"] == steps and r["shots"] == k]
            for rule in ["R0", "R1", "R2", "R3"]:
                gains = [(r["site"], r["true"]["fedavg+ft"] - r["true"][apply_rules(r)[rule]]) for r in cell]
                by_site: dict[str, list[float]] = {}
                for site, g in gains:
                    by_site.setdefault(site, []).append(g)
                worst = min(by_site, key=lambda s: sum(by_site[s]) / len(by_site[s]))
                print(f"| {steps} | {k} | {rule} | {interval([g for _, g in gains])} | {worst}: {interval(by_site[worst])} |")


if __name__ == "__main__":
    main()
