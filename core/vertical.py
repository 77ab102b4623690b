"""The contract between a vertical package and the engine, and the registry of verticals.

A vertical registers one :class:`VerticalSpec` (adding a vertical = adding one package under
``verticals/`` and listing it in ``verticals/__init__.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from torch import Tensor

from core.problem import Problem
from core.registry import Registry
from core.site_statistics import PREPROCESSING_KEY, standardize_federation, standardize_site
from core.tasks import Site


@dataclass(frozen=True)
class VerticalSpec:
    """What the pipeline needs from a vertical.

    Args:
        name: CLI name (``fml run <name>``).
        description: one line for ``fml verticals``.
        data_config: dataclass type of the vertical's data options (documented fields).
        prepare: ``prepare(data_cfg, seed) -> Problem``: read/validate data, build the federation
            (train/validation/test sites), fit federated preprocessing.
        load_new_site: ``load_new_site(data_cfg, preprocessing, site_id) -> (Problem, Site)`` for
            onboarding: reads ONE new site's labelled data with the SAVED preprocessing; the Problem
            serves loss/metrics/few-shot tasks for that site.
        presets_dir: folder of ``<preset>.yaml`` files (at least ``quick`` and ``full``).
        onboard_flags: extra ``fml onboard`` flags mapped to data-config fields, e.g. ``{"rul": "rul_path"}``.
        onboard_args: what a new site passes to ``fml onboard`` (the model card's command).
        rows_based: whether sites hold rows (site-shift report applies).
        reference_baselines: optional NON-federated reference rows for the held-out table:
            ``reference_baselines(problem, run_cfg, test_sites) -> DataFrame`` with columns
            site, method, shots, steps, draw, metric, value (method names carry ``(non-federated)``).
        schema: ``schema(problem) -> dict``: the dataset's schema recorded with a registered model and hashed
            into its dataset name (feature names and types, label and site columns); default: the shape of
            one model input. Two datasets with the same schema can serve the same model.
    """

    name: str
    description: str
    data_config: type
    prepare: Callable[[Any, int], Problem]
    load_new_site: Callable[[Any, dict, Optional[str]], tuple[Problem, Site]]
    presets_dir: Path
    onboard_flags: dict[str, str] = field(default_factory=dict)
    onboard_args: str = "--data NEW_SITE_FILE"
    rows_based: bool = True
    reference_baselines: Optional[Callable[[Problem, Any, list[Site]], Any]] = None
    schema: Optional[Callable[[Problem], dict[str, Any]]] = None

    def build(self, data_cfg: Any, seed: int) -> Problem:
        """``prepare``, then the recipe steps that change every site's inputs (``data.site_statistics``):
        what every caller (run, Flower apps, benchmarks) builds a federation with."""
        problem = self.prepare(data_cfg, seed)
        if getattr(data_cfg, "site_statistics", False):
            standardize_federation(problem)
        return problem

    def new_site(self, data_cfg: Any, preprocessing: dict, site_id: Optional[str],
                 unlabeled: Sequence[Tensor] = ()) -> tuple[Problem, Site]:
        """``load_new_site``, then the same input steps the model was trained with (its saved
        ``preprocessing``), from the site's own inputs plus ``unlabeled`` ones."""
        problem, site = self.load_new_site(data_cfg, preprocessing, site_id)
        if preprocessing.get(PREPROCESSING_KEY):
            standardize_site(problem, site, unlabeled, preprocessing[PREPROCESSING_KEY])
        return problem, site

    def preset_path(self, preset: str) -> Path:
        """``presets_dir/<preset>.yaml`` for a name; a ``.yaml``/``.yml`` file path (``fml tune``'s output) as is."""
        if preset.endswith((".yaml", ".yml")):
            path = Path(preset).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"preset file {path} does not exist")
            return path
        path = self.presets_dir / f"{preset}.yaml"
        if not path.exists():
            choices = sorted(p.stem for p in self.presets_dir.glob("*.yaml"))
            raise FileNotFoundError(f"vertical {self.name!r} has no preset {preset!r}; presets: {', '.join(choices)}")
        return path


VERTICALS: Registry[VerticalSpec] = Registry("vertical")


def register_vertical(spec: VerticalSpec) -> VerticalSpec:
    return VERTICALS.register(spec.name, spec)
