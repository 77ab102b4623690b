"""``fml onboard <vertical>``: registry meta-init -> adapt on a new site's few labels -> personalized model.

Works in a fresh process with only the registry: the model, its preprocessing and the adaptation
settings chosen on validation sites all come from the registered version.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import mlflow
import torch

from core import tracking
from core.adapt import adapt
from core.algorithms.base import InnerConfig, split_meta
from core.evaluation import task_generator
from core.tasks import SiteDataError
from core.vertical import VerticalSpec
from pipelines.console import console, print_frame


@dataclass
class OnboardResult:
    site_id: str
    before: dict[str, float]
    after: dict[str, float]
    model_uri: str
    run_id: str
    registered: Optional[dict[str, str]]
    seconds: float


def _hash_file(path: Optional[str]) -> str:
    if not path or not Path(path).is_file():
        return "none"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def onboard(
    spec: VerticalSpec,
    *,
    data: Optional[str],
    site_id: Optional[str] = None,
    model_uri: Optional[str] = None,
    shots: Optional[int] = None,
    steps: Optional[int] = None,
    lr: Optional[float] = None,
    register: bool = False,
    seed: int = 0,
    overrides: Optional[dict[str, Any]] = None,
) -> OnboardResult:
    """Adapt the registered meta-initialization to one new site and log the personalized model."""
    tracking.setup_tracking()
    model_uri = model_uri or f"models:/fml-{spec.name}@champion"
    loaded = tracking.load_meta_init(model_uri)
    info = loaded.info
    if info.get("vertical") != spec.name:
        raise ValueError(f"{model_uri} is a {info.get('vertical')!r} model, not {spec.name!r}")
    data_cfg = spec.data_config(**{k: v for k, v in info.get("data", {}).items()
                                   if k in {f.name for f in dataclasses.fields(spec.data_config)}})
    changes = dict(overrides or {})
    if data is not None:
        if not Path(data).exists():
            raise FileNotFoundError(f"--data {data}: no such file; give the new site's labelled data file")
        changes["path"] = data
    unknown = set(changes) - {f.name for f in dataclasses.fields(spec.data_config)}
    if unknown:
        raise ValueError(f"unknown data option(s) {sorted(unknown)} for vertical {spec.name!r}")
    data_cfg = dataclasses.replace(data_cfg, **changes)
    problem, site = spec.load_new_site(data_cfg, info.get("preprocessing", {}), site_id)
    _check_labels_known(loaded.model, problem, site)
    shots = shots if shots is not None else int(info.get("shots", 5))
    steps = steps if steps is not None else int(info.get("adapt_steps", 5))
    lr = lr if lr is not None else float(info.get("adapt_lr", 0.05))
    start = time.perf_counter()
    model = loaded.model
    task = problem.few_shot_task(model, site, shots, task_generator(seed, 0, shots, 0))
    params, lrs = split_meta(loaded.meta)
    inner = InnerConfig(**{k: v for k, v in info.get("inner", {}).items() if k in {"weight_decay", "proximal"}})
    support = task.support(params)
    with torch.enable_grad():
        adapted = adapt(problem.loss_fn(model), params, support, steps, lr, lrs=lrs, **inner.adapt_kwargs())
    adapted = {k: v.detach() for k, v in adapted.items()}
    before, after = task.score(params), task.score(adapted)
    seconds = time.perf_counter() - start
    # log the personalized model with its lineage
    exp_id = tracking.ensure_experiment(f"fml-{spec.name}-onboarding")
    lineage = {"source_model": loaded.name or model_uri, "source_version": loaded.version or "",
               "site_id": site.site_id, "shots": shots, "adapt_steps": steps, "adapt_lr": lr,
               "data_sha256": _hash_file(data), "vertical": spec.name, "algorithm": info.get("algorithm", "")}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"onboard-{spec.name}-{site.site_id}") as run:
        mlflow.set_tags(lineage)
        mlflow.log_metrics({**{f"before/{k}": v for k, v in before.items()},
                            **{f"after/{k}": v for k, v in after.items()}, "time/onboard_seconds": seconds})
        personal_info = {**info, "personalized_from": lineage, "before": before, "after": after}
        uri = tracking.log_meta_init(model, adapted, personal_info, problem.input_example(), name="personalized")
        registered = None
        if register:
            name = f"fml-{spec.name}-site-{site.site_id}"
            headline = info.get("headline", next(iter(after)))
            version, alias, reason = tracking.register(uri, name, lineage, headline,
                                                       float(after.get(headline, float("nan"))),
                                                       bool(info.get("higher_is_better", True)))
            registered = {"name": name, "version": version, "alias": alias}
    result = OnboardResult(site.site_id, before, after, uri, run.info.run_id, registered, seconds)
    _print(result, lineage)
    return result


def _check_labels_known(model: torch.nn.Module, problem, site) -> None:
    """Integer class labels must be outputs the model has (a new class cannot be few-shot adapted in)."""
    if torch.is_floating_point(site.y) or site.y.numel() == 0:
        return
    with torch.no_grad():
        n_out = model(problem.input_example()).shape[-1]
    n_out = max(n_out, 2)  # a single logit serves binary labels 0/1
    unseen = sorted(set(torch.unique(site.y).tolist()) - set(range(n_out)))
    if unseen:
        raise SiteDataError(f"site {site.site_id!r} has labels {unseen} the model has never seen (it predicts "
                            f"classes 0..{n_out - 1}); map them to the model's classes or meta-train with them")


def _print(result: OnboardResult, lineage: dict) -> None:
    import pandas as pd

    keys = sorted(set(result.before) | set(result.after))
    df = pd.DataFrame({"metric": keys, "before (meta-init)": [result.before.get(k) for k in keys],
                       "after adaptation": [result.after.get(k) for k in keys]})
    print_frame(df, f"Site {result.site_id}: {lineage['shots']} shots, {lineage['adapt_steps']} steps at lr "
                    f"{lineage['adapt_lr']:.3g} (from {lineage['source_model']} v{lineage['source_version']})")
    console.print(f"personalized model: {result.model_uri} (run {result.run_id}), {result.seconds:.2f} s")
    if result.registered:
        console.print(f"registered {result.registered['name']} v{result.registered['version']}")


__all__ = ["onboard", "OnboardResult", "SiteDataError"]
