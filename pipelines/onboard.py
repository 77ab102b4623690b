"""``fml onboard <vertical>``: registry bundle -> per-site choice -> adapt on a new site's few labels ->
personalized model.

Works in a fresh process with only the registry: the candidates (the best FML initialization and the
FedAvg model), their preprocessing and the adaptation settings chosen on validation sites all come from
the registered version. The site's own support set chooses among the candidates (``core.choice``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import mlflow
import torch

from core import tracking
from core.recipes import DEFAULT_RECIPE, adapt_with_recipe
from core.algorithms.base import InnerConfig, split_meta
from core.choice import Candidate, SiteChoice, choose_candidate
from core.devices import DeviceLike, describe_device, resolve_device, to_device
from core.ensemble import ENSEMBLE, average_of, averages_outputs, ensemble_params, score_ensemble
from core.guard import divergence
from core.evaluation import BASELINE, task_generator
from core.site_statistics import PREPROCESSING_KEY as SITE_STATISTICS, describe, layout_of
from core.tasks import SiteDataError, site_slug
from core.vertical import VerticalSpec
from pipelines.console import console, print_frame
from pipelines.onboard_site import find_site_model, site_for_model


@dataclass
class OnboardResult:
    site_id: str
    before: dict[str, float]
    after: dict[str, float]
    model_uri: str
    run_id: str
    registered: Optional[dict[str, str]]
    seconds: float
    choice: SiteChoice
    """The candidate used, with the cross-validation estimate of every candidate."""


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
    candidate: Optional[str] = None,
    unlabeled: Optional[str] = None,
    register: bool = False,
    seed: int = 0,
    overrides: Optional[dict[str, Any]] = None,
    device: str = "auto",
) -> OnboardResult:
    """Choose the new site's starting point among the registered bundle by cross-validation on its support
    set (or take ``candidate``), adapt it, score the site's other labelled rows, log the personalized model.
    The choice and adaptation run on ``device`` (``auto``: a GPU when there is one); the model is saved from the CPU."""
    target = resolve_device(device)  # a missing GPU fails before anything is read
    tracking.setup_tracking()
    if data is not None and not Path(data).exists():
        raise FileNotFoundError(f"--data {data}: no such file; give the new site's labelled data file")
    if site_id is not None:
        site_slug(site_id)  # refuse an unusable id before reading anything
    overrides = dict(overrides or {})
    found = (site_for_model(spec, model_uri, data, overrides, site_id, unlabeled) if model_uri
             else find_site_model(spec, data, overrides, site_id, unlabeled))  # the first registered model it fits
    loaded, problem, site, extra = found.loaded, found.problem, found.site, found.extra
    model_uri, info = loaded.uri, loaded.info
    if SITE_STATISTICS in site.metadata:
        moments = site.metadata[SITE_STATISTICS]
        unlabeled_rows = sum(len(t) for t in extra) + (len(site.unlabeled) if site.unlabeled is not None else 0)
        flipped = [i for i, s in enumerate(moments.get("sign", [])) if s < 0]
        oriented = (f"; this site's channel(s) {flipped} were REFLECTED: its mean image is a negative of the training "
                    "sites'" if flipped else "")
        console.print(f"site statistics: {describe(moments['mode'])} ({moments['rows']} inputs, {unlabeled_rows} "
                      f"without a label given){oriented}")
    slug = site_slug(site.site_id)
    _check_labels_known(loaded.model, problem, site)
    shots = shots if shots is not None else int(info.get("shots", 5))
    steps = steps if steps is not None else int(info.get("adapt_steps", 5))
    start = time.perf_counter()
    model = loaded.model.to(target)
    task = problem.few_shot_task(model, site, shots, task_generator(seed, 0, shots, 0))
    candidates = bundle_candidates(loaded, lr, problem.param_groups(model)["head"], target)
    default = str(info.get("default_by_steps", {}).get(str(steps), info.get("algorithm", "default")))
    checked = None  # what validation supports of about this size chose, when the site falls back to the default
    if candidate == ENSEMBLE and len(candidates) > 1 and averages_outputs(task):
        choice = SiteChoice(ENSEMBLE, {}, 0, f"forced with --candidate: the mean of {', '.join(candidates)}, each adapted")
    elif candidate is not None:
        if candidate not in candidates:
            also = f" and {ENSEMBLE!r} (their adapted outputs averaged)" if len(candidates) > 1 and averages_outputs(task) else ""
            if candidate == ENSEMBLE and not also:
                also = (f"; {ENSEMBLE!r} needs two candidates and a model scored by its outputs on fixed rows "
                        "(not a policy scored by its rollouts)")
            raise ValueError(f"--candidate {candidate!r} is not in {model_uri}; its candidates are {sorted(candidates)}{also}")
        choice = SiteChoice(candidate, {}, 0, "forced with --candidate")
    else:
        loss_fn = problem.loss_fn(model)
        choice = choose_candidate(loss_fn, list(candidates.values()), task.support_folds(int(info.get("choice_folds", 5))),
                                  steps, default, task.choice_criterion(loss_fn), BASELINE, task.episode_trials(), shots,
                                  problem.higher_is_better, task.episode_support(), tries_adapted(info, shots, steps))
        if choice.folds == 0 and not choice.trials and len(candidates) > 1:
            checked = validation_choice(info, shots, steps)
    if checked is not None and checked[1] != default:
        console.print(f"[yellow]note:[/] this support cannot be cross-validated, so the site starts from the default "
                      f"{default}; validation supports of {checked[0]} shots chose {checked[1]} "
                      f"(`--candidate {checked[1]}` starts from it)")
    members = list(candidates.values()) if choice.name == ENSEMBLE else [candidates[choice.name]]
    adapted_members, diverged = [], False
    if choice.adapted is not None:  # the choice adapted the pick on its own rollouts: the site's model as it is
        adapted_members, diverged = [choice.adapted], choice.kept_start
        if diverged:
            console.print(f"[bold yellow]warning:[/] adapting {choice.name} on its own rollouts diverged (non-finite "
                          "weights): the site keeps its start, unadapted; onboard with a smaller --lr to adapt it")
    else:
        for member in members:
            adapted, member_diverged = _adapt(member, task, problem.loss_fn(model), steps)
            adapted_members.append(adapted)
            diverged |= member_diverged
    if len(members) == 1:
        serving, adapted = model, adapted_members[0]
        before, after = task.score(members[0].params), task.score(adapted)
    else:  # one module averaging the adapted members' outputs: served and scored as one model
        serving, adapted = average_of(model, len(members)), ensemble_params(adapted_members)
        before = score_ensemble(task, [m.params for m in members])
        after = score_ensemble(task, adapted_members)
    lrs = [m.lr_for(steps) for m in members]
    used_lr = lrs[0] if len(lrs) == 1 else ", ".join(f"{m.name} {lr:g}" for m, lr in zip(members, lrs))
    seconds = time.perf_counter() - start
    headline = str(info.get("headline", next(iter(after))))
    helped = adaptation_helped(before, after, headline, bool(info.get("higher_is_better", True)))
    # log the personalized model with its lineage
    exp_id = tracking.ensure_experiment(f"fml-{spec.name}-onboarding")
    lineage = {"source_model": loaded.name or model_uri, "source_version": loaded.version or "",
               "site_id": site.site_id, "shots": shots, "adapt_steps": 0 if diverged else steps, "adapt_lr": used_lr,
               "recipe": ",".join(m.recipe_for(steps) for m in members), "members": ",".join(m.name for m in members),
               "data_sha256": _hash_file(data), "vertical": spec.name, "algorithm": choice.name,
               "candidate": choice.name, "choice_reason": choice.reason, "choice_folds": choice.folds,
               "choice_trials": choice.trials,
               "cv_losses": json.dumps({name: round(v, 5) for name, v in choice.estimates.items()}),
               "cv_pvalues": json.dumps({name: round(p, 4) for name, p in choice.pvalues.items()}),
               "device": describe_device(target), "adaptation_diverged": str(diverged).lower(), "adaptation_helped": {True: "true", False: "false", None: "unknown"}[helped],
               "default_confirmed": "unknown" if checked is None else str(checked[1] == default).lower()}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"onboard-{spec.name}-{slug}") as run:
        mlflow.set_tags(lineage)
        mlflow.log_metrics({**{f"before/{k}": v for k, v in before.items()},
                            **{f"after/{k}": v for k, v in after.items()}, "time/onboard_seconds": seconds})
        personal_info = {**info, "algorithm": choice.name, "candidates": {}, "personalized_from": lineage,
                         "before": before, "after": after}
        if SITE_STATISTICS in site.metadata:  # scoring the site's future inputs needs its own moments
            personal_info["site_moments"] = site.metadata[SITE_STATISTICS]
        uri = tracking.log_meta_init(serving, adapted, personal_info, problem.input_example(), name="personalized")
        registered = None
        if register:
            name = f"fml-{spec.name}-site-{slug}"
            version, alias, reason = tracking.register(uri, name, lineage, headline,
                                                       float(after.get(headline, float("nan"))),
                                                       bool(info.get("higher_is_better", True)))
            registered = {"name": name, "version": version, "alias": alias}
    result = OnboardResult(site.site_id, before, after, uri, run.info.run_id, registered, seconds, choice)
    _print(result, lineage, headline, bool(info.get("higher_is_better", True)))
    if helped is False:
        console.print(f"[yellow]warning:[/] adaptation made {headline} on this site's other labelled rows worse "
                      f"({before.get(headline, float('nan')):.4g} -> {after.get(headline, float('nan')):.4g}); the "
                      "start itself scored better: `--steps 0` keeps it, or onboard with more labelled examples")
    return result


def guarded_adaptation(member: Candidate, task, loss_fn, steps: int) -> tuple[dict[str, torch.Tensor], Optional[str]]:
    """``member`` adapted on ``task``'s support with its recipe, and why it diverged (None when it did not;
    :func:`core.guard.divergence`: non-finite weights, or a support loss that adaptation RAISED). Then its start,
    unadapted: such a model must never be logged or registered as the site's. Pure: prints nothing."""
    support = task.support(member.params)
    with torch.enable_grad():
        adapted = adapt_with_recipe(member.recipe_for(steps), loss_fn, member.params, support, steps,
                                    member.lr_for(steps), head=member.head, lrs=member.lrs, **dict(member.adapt_kwargs))
    adapted = {k: v.detach() for k, v in adapted.items()}
    why = divergence(loss_fn, member.params, adapted, support, loss_should_fall=task.support_loss_falls,
                     adapt_kwargs=member.adapt_kwargs, support_errors=task.support_errors)
    if why is None:
        return adapted, None
    return {k: v.detach() for k, v in member.params.items()}, why


def _adapt(member: Candidate, task, loss_fn, steps: int) -> tuple[dict[str, torch.Tensor], bool]:
    """:func:`guarded_adaptation`, saying so when the site keeps its start."""
    adapted, why = guarded_adaptation(member, task, loss_fn, steps)
    if why is not None:
        console.print(f"[bold yellow]warning:[/] adapting {member.name} with lr {member.lr_for(steps):g} for {steps} "
                      f"steps {why}: the site keeps its start, unadapted; onboard with a smaller --lr or fewer "
                      "--steps to adapt it")
    return adapted, why is not None


def nearest_shots(grid: Iterable[int], shots: int) -> int:
    """The shots count of a run's ``grid`` nearest a site's ``shots`` (the smaller on a tie)."""
    return min(grid, key=lambda n: (abs(n - shots), n))


def tries_adapted(info: dict, shots: int, steps: int) -> bool:
    """Whether a site whose support the policy produces tries the starts adapted at ``steps`` steps: what the run's
    validation sites chose at the shots count of its grid nearest ``shots`` (``adapted_trials_by_shots`` in
    ``fml.json``; :func:`core.evaluation.adapted_trial_steps`)."""
    by_shots = {int(k): v for k, v in info.get("adapted_trials_by_shots", {}).items()}
    grid = {int(info.get("shots", shots)), *by_shots, *map(int, info.get("validation_choice_by_shots", {}))}
    return steps in by_shots.get(nearest_shots(grid, shots), ())


def validation_choice(info: dict, shots: int, steps: int) -> Optional[tuple[int, str]]:
    """``(k, start)``: what validation supports of ``k`` shots chose at ``steps`` steps, ``k`` the shots count
    of the run's grid nearest ``shots`` among those checked (``validation_choice_by_shots`` in ``fml.json``;
    the registration shots: the default itself); None when the model records no check."""
    by_shots = {int(k): v for k, v in info.get("validation_choice_by_shots", {}).items()}
    if not by_shots:
        return None
    by_shots.setdefault(int(info.get("shots", shots)), info.get("default_by_steps", {}))
    k = nearest_shots(by_shots, shots)
    name = by_shots[k].get(str(steps))
    return (k, str(name)) if name is not None else None


def adaptation_helped(before: dict[str, float], after: dict[str, float], headline: str,
                      higher_is_better: bool) -> Optional[bool]:
    """Whether adapting left the site's scored rows at least as good on ``headline`` as its start; None when
    either score is undefined (e.g. AUROC of scored rows of one class)."""
    b, a = before.get(headline, float("nan")), after.get(headline, float("nan"))
    if math.isnan(a) or math.isnan(b):
        return None
    return bool(a >= b if higher_is_better else a <= b)


def unlabeled_inputs(spec: VerticalSpec, data_cfg: Any, preprocessing: dict, site_id: Optional[str],
                     path: Optional[str]) -> list[torch.Tensor]:
    """The inputs of ``path`` (the site's unlabeled rows, read by the vertical's adapter in the data file's
    format; labels, if any, are ignored), for site statistics."""
    if path is None:
        return []
    if not preprocessing.get(SITE_STATISTICS):
        raise ValueError(f"--unlabeled {path}: the model was trained without site statistics "
                         "(data.site_statistics), so unlabeled inputs would not be used")
    if not Path(path).exists():
        raise FileNotFoundError(f"--unlabeled {path}: no such file; give the site's unlabeled inputs")
    label_files = {name: None for name in spec.onboard_flags.values()}  # e.g. --rul belongs to --data, not to this file
    problem, site = spec.load_new_site(dataclasses.replace(data_cfg, path=path, **label_files), preprocessing, site_id)
    return layout_of(problem, preprocessing[SITE_STATISTICS]).basis(site)  # selected as the site's own inputs are


def bundle_candidates(loaded: tracking.LoadedModel, lr: Optional[float], head: tuple[str, ...] = (),
                      device: DeviceLike = "cpu") -> dict[str, Candidate]:
    """The registered bundle as candidates with their validation-chosen recipes (``lr`` overrides every
    step size), parameters on ``device``. A model registered before bundles existed is one candidate with its
    recorded recipe."""
    info = loaded.info
    recipes = info.get("candidates") or {str(info.get("algorithm", "default")): {
        "lr_by_steps": {}, "best_lr": float(info.get("adapt_lr", 0.05)), "inner": info.get("inner", {})}}
    out = {}
    for name, recipe in recipes.items():
        if name not in loaded.candidates:
            raise tracking.RegistryError(f"{loaded.uri}: fml.json names candidate {name!r} but the bundle has no "
                                         f"parameters for it (has {sorted(loaded.candidates)})")
        params, lrs = split_meta(to_device(loaded.candidates[name], device))
        by_steps = {int(k): float(v) for k, v in recipe.get("lr_by_steps", {}).items()}
        best_lr = float(recipe.get("best_lr", 0.05))
        lr_for = (lambda s, b=by_steps, d=best_lr: b.get(s, d)) if lr is None else (lambda s: float(lr))
        inner = InnerConfig(**{k: v for k, v in recipe.get("inner", {}).items() if k in {"weight_decay", "proximal"}})
        recipe_by_steps = {int(k): str(v) for k, v in recipe.get("recipe_by_steps", {}).items()}
        best_recipe = str(recipe.get("best_recipe", DEFAULT_RECIPE))
        out[name] = Candidate(name, params, lr_for, lrs, inner.adapt_kwargs(),
                              lambda s, b=recipe_by_steps, d=best_recipe: b.get(s, d), tuple(head))
    return out


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


def _rate(lr: Any) -> str:
    return f"{lr:.3g}" if isinstance(lr, float) else str(lr)


def _print(result: OnboardResult, lineage: dict, headline: str, higher: bool) -> None:
    import pandas as pd

    choice = result.choice
    if choice.estimates:
        if choice.trials:  # the trials' losses are the headline, negated where higher is better: show the headline
            label = f"mean {headline} of its {choice.trials} episodes ({'higher' if higher else 'lower'} is better)"
            values = [-v if higher else v for v in choice.estimates.values()]
        else:
            label, values = "cross-validated loss (lower is better)", list(choice.estimates.values())
        est = pd.DataFrame({"candidate": list(choice.estimates), label: values})
        # how strong the evidence was: with 2 folds of one example per class even 4 agreeing units give p = 0.0625
        est["p (beats the anchor)"] = [f"{choice.pvalues[c]:.3g}" if c in choice.pvalues else "anchor"
                                       for c in est["candidate"]]
        est["chosen"] = est["candidate"].eq(choice.name).map({True: "<-", False: ""})
        print_frame(est, "Starting point chosen on the site's own " + ("episodes" if choice.trials else "support"))
        console.print(f"chose {choice.name}: {choice.reason}")
    else:
        console.print(f"starting point: {choice.name} ({choice.reason})")
    keys = sorted(set(result.before) | set(result.after))
    df = pd.DataFrame({"metric": keys, "before (start)": [result.before.get(k) for k in keys],
                       "after adaptation": [result.after.get(k) for k in keys]})
    on = (f"its own rollouts (of {lineage['shots']})" if choice.adapted is not None else f"{lineage['shots']} shots")
    print_frame(df, f"Site {result.site_id}: {choice.name} adapted on {on}, "
                    f"{lineage['adapt_steps']} steps at lr {_rate(lineage['adapt_lr'])} "
                    f"(from {lineage['source_model']} v{lineage['source_version']})")
    console.print(f"personalized model: {result.model_uri} (run {result.run_id}), {result.seconds:.2f} s")
    if result.registered:
        console.print(f"registered {result.registered['name']} v{result.registered['version']}")


__all__ = ["onboard", "OnboardResult", "SiteDataError"]
