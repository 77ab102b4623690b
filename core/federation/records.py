"""What travels in Flower messages: parameters as an ``ArrayRecord`` keyed by parameter NAME, the round's
instructions as a ``ConfigRecord``, and the checks a received update must pass before it is aggregated.

Message layout (both directions): ``{"arrays": ArrayRecord, "config": ConfigRecord}`` to the node,
``{"arrays": ArrayRecord, "metrics": MetricRecord}`` back (the ``MetricRecord`` carries ``num-examples``,
``weight`` and the algorithm's scalar metrics). No rows and no labels are ever put in a message.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: the ClientApp module must start fast
    from core.types import Params

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
WEIGHT = "weight"

# instruction keys (ConfigRecord of a message to a node)
VERTICAL = "fml.vertical"
DATA = "fml.data"
SEED = "fml.seed"
ALGORITHM = "fml.algorithm"
ROUND = "fml.round"
REPLY = "fml.reply"  # "direction" (core rule) or "weights" (init - direction, for Flower strategies)
WEIGHTING = "fml.weighting"
INCLUDE_INIT = "fml.include-init"
PARAM_NAMES = "fml.param-names"  # SecAgg+ path: parameters travel as an ordered list
DP_CLIP = "fml.dp-clip"  # SecAgg+ with DP-FedAvg: the L2 bound each site clips its own direction to
EVAL_SHOTS = "eval.shots"
EVAL_STEPS = "eval.steps"
EVAL_LR = "eval.lr"
EVAL_DRAWS = "eval.draws"
INNER_PREFIX = "inner."

Shapes = dict[str, tuple[tuple[int, ...], str]]


def params_to_record(params: "Params"):
    """``{name: Tensor}`` -> ``ArrayRecord`` (CPU, detached; names and order kept)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in params.items()})


def record_to_params(record) -> "Params":
    """``ArrayRecord`` -> ``{name: Tensor}``."""
    import torch

    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def shapes_of(params: Mapping[str, Any]) -> Shapes:
    """Expected ``{name: (shape, dtype)}`` of updates, from the current meta-parameters."""
    return {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in params.items()}


def check_update(record, expected: Shapes) -> Optional[str]:
    """Why an update must be rejected (``None`` if it is acceptable): wrong names, shapes, dtypes or
    non-finite values. Checked before anything is averaged."""
    names = list(record.keys())
    if set(names) != set(expected):
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        return f"parameter names differ (missing {missing}, unexpected {extra})"
    for name in expected:
        shape, dtype = expected[name]
        arr = record[name]
        got = tuple(int(s) for s in arr.shape)
        if got != shape:
            return f"parameter {name!r} has shape {list(got)}, expected {list(shape)}"
        if str(arr.dtype) != dtype:
            return f"parameter {name!r} has dtype {arr.dtype}, expected {dtype}"
        values = arr.numpy()
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            return f"parameter {name!r} has {bad} non-finite values (NaN/inf)"
    return None


def check_metrics(metrics: Mapping[str, Any]) -> Optional[str]:
    """Why a reply's metrics are unusable (missing or non-positive weight), else ``None``."""
    w = metrics.get(WEIGHT)
    if w is None or isinstance(w, list) or not math.isfinite(float(w)) or float(w) <= 0:
        return f"reply weight {w!r} is missing or not a positive number"
    return None


def inner_to_config(inner: Any) -> dict[str, Any]:
    """An ``InnerConfig`` dataclass as ``inner.<field>`` config entries."""
    # ``trainable`` and ``rate_groups`` are resolved on each node (its own model's parameter names)
    return {INNER_PREFIX + f.name: getattr(inner, f.name) for f in dataclasses.fields(inner)
            if f.name not in ("trainable", "rate_groups")}


def inner_from_config(config: Mapping[str, Any]):
    """The ``InnerConfig`` sent by the server."""
    from core.algorithms.base import InnerConfig

    kwargs = {}
    for f in dataclasses.fields(InnerConfig):
        if INNER_PREFIX + f.name in config:
            kwargs[f.name] = type(getattr(InnerConfig(), f.name))(config[INNER_PREFIX + f.name])
    return InnerConfig(**kwargs)


def data_to_config(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), sort_keys=True)


def data_from_config(text: str) -> dict[str, Any]:
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ValueError(f"{DATA} must be a JSON object of data-config fields, got {text!r}")
    return value
