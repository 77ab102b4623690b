"""Resolve a run configuration: dataclass defaults <- vertical YAML preset <- command-line overrides."""
from __future__ import annotations

import warnings
from dataclasses import field, make_dataclass
from typing import Any, Optional, Sequence

import tyro
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.config import RunConfig
from core.vertical import VerticalSpec


class ConfigError(ValueError):
    """A preset or override does not fit the configuration schema."""


_TYPES: dict[str, type] = {}


def run_config_type(spec: VerticalSpec) -> type:
    """``RunConfig`` with the vertical's data options as a concrete typed ``data`` field."""
    if spec.name in _TYPES:
        return _TYPES[spec.name]
    cls = make_dataclass(f"{spec.name.title().replace('_', '')}RunConfig",
                         [("data", spec.data_config, field(default_factory=spec.data_config))], bases=(RunConfig,))
    cls.__doc__ = f"fml run {spec.name}: {spec.description}. " + (RunConfig.__doc__ or "")
    _TYPES[spec.name] = cls
    return cls


def load_preset(spec: VerticalSpec, preset: Optional[str]) -> Any:
    """Defaults merged with ``verticals/<name>/presets/<preset>.yaml`` (typed: unknown keys are errors)."""
    base = OmegaConf.structured(run_config_type(spec))
    if preset:
        path = spec.preset_path(preset)
        try:
            merged = OmegaConf.merge(base, OmegaConf.create(yaml.safe_load(path.read_text()) or {}))
        except OmegaConfBaseException as err:
            raise ConfigError(f"preset {path}: {str(err).splitlines()[0]}") from None
        return OmegaConf.to_object(merged)
    return OmegaConf.to_object(base)


def resolve_run_config(spec: VerticalSpec, preset: Optional[str], args: Sequence[str], prog: str) -> Any:
    """The run config for ``fml run <vertical> --preset P [--key value ...]`` (``--help`` lists every option)."""
    default = load_preset(spec, preset)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"tyro\.")  # its advice on field defaults
        return tyro.cli(run_config_type(spec), default=default, args=list(args), prog=prog)
