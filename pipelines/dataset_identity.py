"""Which dataset a run is on, and so under which model name it registers.

A run on the vertical's DEFAULT dataset -- every data option that chooses the data or its schema (the data
config's ``DATASET_OPTIONS``: ``path``, site/label/id columns ...) at its default -- registers as
``fml-<vertical>``. Any other dataset registers as ``fml-<vertical>-<dataset>``, ``<dataset>`` being a short slug
from the data itself: the file's stem (``data.path``, else the file the vertical read by default) and the first
characters of the schema's hash (feature names and types, label, site column: ``VerticalSpec.schema``). Its
``@champion`` is then its own: a model trained on another table never competes with the claims model, and a
run on the same table with the same schema always finds its earlier versions. ``--tracking.model-name`` still
chooses a name by hand.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.problem import Problem
from core.vertical import VerticalSpec

#: characters of the schema hash in a dataset name (16.7 M values: enough to tell a team's tables apart)
SLUG_HASH = 6
#: characters of the file stem kept in a dataset name
SLUG_STEM = 32
#: preprocessing keys naming where a vertical read its data when no data.path was given (the default file, or
#: the label of generated stand-in data)
SOURCE_KEYS = ("source", "data_source")


@dataclass(frozen=True)
class DatasetIdentity:
    """The dataset of a run: ``name`` (``<stem>-<hash>``, MLflow-name-safe), its ``schema`` and the schema's
    sha256, and whether it is the vertical's default dataset."""

    name: str
    schema: dict[str, Any]
    schema_sha256: str
    default: bool

    def model_name(self, vertical: str) -> str:
        """``fml-<vertical>`` for the default dataset, else ``fml-<vertical>-<name>``."""
        return f"fml-{vertical}" if self.default else f"fml-{vertical}-{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dataset_options(data_cfg: Any) -> tuple[str, ...]:
    """The data options that choose the dataset (``DATASET_OPTIONS`` of the data config; ``path`` when it
    declares none)."""
    names = {f.name for f in dataclasses.fields(data_cfg)} if dataclasses.is_dataclass(data_cfg) else set()
    declared = getattr(type(data_cfg), "DATASET_OPTIONS", ("path",))
    return tuple(n for n in declared if n in names)


def is_default_dataset(data_cfg: Any) -> bool:
    """Whether every dataset-choosing option of ``data_cfg`` has its default value."""
    fields = {f.name: f for f in dataclasses.fields(data_cfg)} if dataclasses.is_dataclass(data_cfg) else {}
    for name in dataset_options(data_cfg):
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(data_cfg, name) != default:
            return False
    return True


def schema_of(spec: VerticalSpec, problem: Problem) -> dict[str, Any]:
    """The vertical's schema of ``problem`` (``VerticalSpec.schema``), else the shape of one model input."""
    if spec.schema is not None:
        return spec.schema(problem)
    return {"input_shape": list(problem.input_example().shape[1:])}


def slug(text: str, limit: int = SLUG_STEM) -> str:
    """Lower-case letters, digits and single dashes (safe in an MLflow model name and a ``models:/`` URI)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")[:limit].strip("-") or "data"


def dataset_identity(spec: VerticalSpec, data_cfg: Any, problem: Problem) -> DatasetIdentity:
    """The identity of the dataset ``problem`` was built from with ``data_cfg``."""
    schema = schema_of(spec, problem)
    sha = hashlib.sha256(json.dumps(schema, sort_keys=True, default=str).encode()).hexdigest()
    source = getattr(data_cfg, "path", None) or next(
        (problem.preprocessing[k] for k in SOURCE_KEYS if problem.preprocessing.get(k)), "default")
    stem = Path(str(source)).name.split(".")[0]  # data/claims.csv.gz -> claims
    return DatasetIdentity(f"{slug(stem)}-{sha[:SLUG_HASH]}", schema, sha, is_default_dataset(data_cfg))
