"""The registered model a new site onboards from, and the site's data read with that model's saved settings.

``fml onboard <vertical> --data FILE`` without ``--model`` tries the champion of every model ``fml run``
registered for the vertical (``fml-<vertical>`` first, then one per other dataset:
:mod:`pipelines.dataset_identity`) and takes the first whose schema the file fits; when none fits it says
why for each and which ``--model`` to pass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from core import tracking
from core.tasks import Site, SiteDataError
from core.vertical import VerticalSpec
from pipelines.console import console


@dataclass
class SiteData:
    """A registered model and the new site's data, read with the model's data options and preprocessing."""

    loaded: tracking.LoadedModel
    data_cfg: Any
    problem: Any
    site: Site
    extra: list[torch.Tensor]
    """The site's unlabeled inputs from ``--unlabeled`` (site statistics)."""


def site_for_model(spec: VerticalSpec, model_uri: str, data: Optional[str], overrides: dict[str, Any],
                   site_id: Optional[str], unlabeled: Optional[str]) -> SiteData:
    """Load ``model_uri`` and read the site's data (``data``, else the model's own data file) with its settings;
    a ``ValueError`` (``SiteDataError``, a schema mismatch ...) when the data does not fit the model."""
    from pipelines.onboard import unlabeled_inputs

    loaded = tracking.load_meta_init(model_uri)
    info = loaded.info
    if info.get("vertical") != spec.name:
        raise ValueError(f"{model_uri} is a {info.get('vertical')!r} model, not {spec.name!r}")
    names = {f.name for f in dataclasses.fields(spec.data_config)}
    data_cfg = spec.data_config(**{k: v for k, v in info.get("data", {}).items() if k in names})
    changes = dict(overrides)
    if data is not None:
        changes["path"] = data
    unknown = set(changes) - names
    if unknown:
        raise ValueError(f"unknown data option(s) {sorted(unknown)} for vertical {spec.name!r}")
    data_cfg = dataclasses.replace(data_cfg, **changes)
    preprocessing = info.get("preprocessing", {})
    extra = unlabeled_inputs(spec, data_cfg, preprocessing, site_id, unlabeled)
    problem, site = spec.new_site(data_cfg, preprocessing, site_id, extra)
    if len(site) == 0:
        column = next((getattr(data_cfg, f) for f in ("label_column", "label") if isinstance(getattr(data_cfg, f, None), str)), None)
        named = f"label column {column!r}" if column else "label column"
        raise SiteDataError(f"{data_cfg.path}: site {site.site_id!r} has no labelled row (no {named}, or every "
                            "label empty); onboarding adapts on labelled examples. Pass a file of inputs without "
                            "labels as --unlabeled")
    return SiteData(loaded, data_cfg, problem, site, extra)


def find_site_model(spec: VerticalSpec, data: Optional[str], overrides: dict[str, Any], site_id: Optional[str],
                    unlabeled: Optional[str]) -> SiteData:
    """The champion of the first registered model of ``spec`` whose schema ``data`` fits (see the module)."""
    names = tracking.dataset_models(spec.name)
    if not names:  # nothing registered: the default name's own error says how to create one
        return site_for_model(spec, f"models:/fml-{spec.name}@champion", data, overrides, site_id, unlabeled)
    misfits = []
    for name in names:
        try:
            found = site_for_model(spec, f"models:/{name}@champion", data, overrides, site_id, unlabeled)
        except ValueError as err:
            reason = str(err).splitlines()[0]
            misfits.append(f"{name}: {reason.replace(data, 'the file') if data else reason}")
            continue
        if len(names) > 1 or name != f"fml-{spec.name}":
            others = [n for n in names if n != name]
            console.print(f"model: models:/{name}@champion, the first registered {spec.name} model whose schema "
                          f"{data or 'the data'} fits" + (f" (also registered: {', '.join(others)}; --model chooses)"
                                                          if others else ""))
        return found
    raise SiteDataError(f"{data or 'the data'} fits none of the registered {spec.name} models ("
                        + " | ".join(misfits) + f"); pass --model models:/<name>@champion, or register a model for "
                        f"this data with `fml run {spec.name} --data.path ...`")
