"""The preset ``fml tune`` writes: the preset its trials started from, the run options it was given, and the
best settings of the tuned algorithm -- a YAML file that ``fml run <vertical> --preset PATH`` takes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf

from core.config import flatten, parse_algorithm_overrides, to_plain
from core.vertical import VerticalSpec
from pipelines.config import load_preset

#: Run options a preset does not carry from the tuning command (where it logged, its own folder), and the two
#: the tuned preset sets itself.
NOT_CARRIED = ("tracking", "output_dir", "resume", "algorithms", "algorithm_overrides")


def tuned_overrides(overrides: list[str], algorithm: str, params: dict[str, Any]) -> list[str]:
    """The ``algorithm_overrides`` of a run that trains ``algorithm`` (and FedAvg) with ``params``: the given
    ones of FedAvg and ``algorithm`` (other algorithms are not trained, and a run refuses their overrides) except
    the keys of ``params``, then ``params`` as ``algorithm:key=value`` (exact floats: ``repr``)."""
    kept = []
    for item in overrides:
        name, _, setting = item.partition(":")
        if name.strip() == "fedavg" or (name.strip() == algorithm and setting.partition("=")[0].strip() not in params):
            kept.append(item)
    return kept + [f"{algorithm}:{key}={value!r}" for key, value in params.items()]


def tuned_preset_text(spec: VerticalSpec, preset: Optional[str], cfg: Any, algorithm: str,
                      params: dict[str, Any], header: str = "") -> str:
    """The YAML text of the tuned preset.

    The tuned values enter as ``algorithm_overrides`` of ``algorithm`` (not as ``inner``/``server``), so the
    FedAvg baseline -- trained with ``inner`` unless ``baseline_lr`` -- keeps its hand-set settings and a
    tuned run compares against the same baseline as the hand-set one. ``algorithms`` becomes ``[algorithm]``.

    Args:
        spec: the vertical.
        preset: the preset the trials started from (name or ``.yaml`` path; None: the dataclass defaults).
        cfg: the resolved run config of the tuning command (preset plus its command-line run options).
        algorithm: the tuned algorithm.
        params: best values keyed ``inner.lr``, ``inner.steps``, ``server.lr``.
        header: comment lines written at the top (without ``#``).
    """
    raw = (yaml.safe_load(spec.preset_path(preset).read_text()) or {}) if preset else {}
    conf = OmegaConf.create(raw)
    preset_only = flatten(to_plain(load_preset(spec, preset)))
    for key, value in flatten(to_plain(cfg)).items():  # the run options given on the command line
        if key.split(".")[0] not in NOT_CARRIED and preset_only.get(key) != value:
            OmegaConf.update(conf, key, value, merge=False)
    overrides = tuned_overrides(cfg.algorithm_overrides, algorithm, params)
    parse_algorithm_overrides(overrides)  # malformed entries fail here, not in the run that reads the file
    conf.algorithms = [algorithm]
    conf.algorithm_overrides = overrides
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + OmegaConf.to_yaml(conf)


def write_tuned_preset(path: Path, spec: VerticalSpec, text: str) -> Any:
    """Write ``text`` to ``path`` and load it back the way ``fml run --preset PATH`` does (a preset the run
    would refuse is an error here, not later); returns the loaded run config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_preset(spec, str(path))
