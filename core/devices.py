"""Where the engine computes: ``--device auto|cpu|cuda``.

Sites keep their data on the CPU (a federation can be far larger than an accelerator's memory); what a
round or an evaluation draw USES -- an episode, a support set, a chunk of scored rows -- moves to the
model's device when it is drawn (:func:`to_device`), and the model and meta-parameters live there. Saved
models and checkpoints are always written and read on the CPU (``map_location="cpu"``), so a model
trained on a GPU loads anywhere.

:func:`check_devices` is the guard that nothing silently stays behind: the learner runs it on every
tensor of every round (meta-parameters, episodes, client directions, the aggregated direction), and the
tests run rounds and adaptation on torch's ``meta`` device -- a second device every machine has -- so a
missing move fails on a CPU-only machine too.
"""
from __future__ import annotations

from dataclasses import replace
from functools import singledispatch
from typing import Any, Callable, Iterator, Union

import torch
from torch import Tensor, nn

from core.registry import Registry
from core.types import Episode

DeviceLike = Union[str, torch.device]


class DeviceError(ValueError):
    """The requested device is not available here, or a tensor is not on the device it must be on."""


def _auto() -> torch.device:
    return _cuda() if torch.cuda.is_available() else torch.device("cpu")


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        built = torch.version.cuda is not None
        why = ("no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)" if built
               else f"this PyTorch build ({torch.__version__}) has no CUDA support")
        raise DeviceError(f"--device cuda: {why}; use --device cpu, or --device auto to take a GPU only when present")
    return torch.device("cuda", torch.cuda.current_device())


#: ``--device`` name -> the device it means on this machine.
DEVICES: Registry[Callable[[], torch.device]] = Registry("device")
DEVICES.register("auto", _auto)
DEVICES.register("cpu", lambda: torch.device("cpu"))
DEVICES.register("cuda", _cuda)

#: torch device type -> the Lightning Trainer's ``accelerator``.
ACCELERATORS: Registry[str] = Registry("Lightning accelerator for device type")
ACCELERATORS.register("cpu", "cpu")
ACCELERATORS.register("cuda", "gpu")


def resolve_device(name: DeviceLike) -> torch.device:
    """The device ``name`` (``auto`` | ``cpu`` | ``cuda``, or a ``torch.device``) means here; ``cuda`` without
    a usable GPU is a :class:`DeviceError` with a one-line explanation."""
    if isinstance(name, torch.device):
        return name
    return DEVICES.get(name)()


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what a run records and prints."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def lightning_accelerator(device: torch.device) -> tuple[str, Union[int, list[int]]]:
    """``(accelerator, devices)`` for ``pl.Trainer`` so that it puts the learner on ``device``."""
    accelerator = ACCELERATORS.get(device.type)
    return accelerator, ([device.index] if device.index is not None else 1)


@singledispatch
def to_device(obj: Any, device: DeviceLike) -> Any:
    """``obj`` with every tensor on ``device``: a tensor, a batch (tuple/list), parameters (dict) or an
    :class:`~core.types.Episode` (a rollout episode's ``query_fn`` is kept: it produces its own batches on
    the device of the parameters it is given). Tensors already there are returned as they are."""
    raise TypeError(f"to_device: cannot move a {type(obj).__name__}; expected a tensor, a tuple/list/dict of "
                    "tensors or an Episode")


@to_device.register
def _(obj: Tensor, device: DeviceLike) -> Tensor:
    return obj.to(device)


@to_device.register(tuple)
@to_device.register(list)
def _(obj, device: DeviceLike):
    return type(obj)(to_device(v, device) for v in obj)


@to_device.register
def _(obj: dict, device: DeviceLike) -> dict:
    return {k: to_device(v, device) for k, v in obj.items()}


@to_device.register
def _(obj: Episode, device: DeviceLike) -> Episode:
    target = torch.device(device)
    if all(isinstance(t, Tensor) and t.device == target for t in (*obj.support, *obj.query)):
        return obj  # already there (every CPU round): no copy of the episode (about 10 us each)
    return replace(obj, support=to_device(obj.support, device), query=to_device(obj.query, device))


@to_device.register(type(None))
def _(obj: None, device: DeviceLike) -> None:
    return None


def device_of(obj: Union[nn.Module, dict[str, Tensor]]) -> torch.device:
    """The device of a module's or a parameter dict's first tensor (CPU when it has none)."""
    tensors = obj.parameters() if isinstance(obj, nn.Module) else iter(obj.values())
    first = next(tensors, None)
    return first.device if first is not None else torch.device("cpu")


def named_tensors(obj: Any, name: str) -> Iterator[tuple[str, Tensor]]:
    """Every tensor inside ``obj`` (tensors, tuples/lists, dicts, episodes) with a readable path."""
    if isinstance(obj, Tensor):
        yield name, obj
    elif isinstance(obj, Episode):
        yield from named_tensors(obj.support, f"{name}.support")
        yield from named_tensors(obj.query, f"{name}.query")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from named_tensors(v, f"{name}[{k!r}]")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{name}[{i}]")


def _tensors(obj: Any, out: list[Tensor]) -> list[Tensor]:
    """The tensors of :func:`named_tensors` without their paths (the per-round check needs no names unless it fails)."""
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, Episode):
        _tensors(obj.support, out)
        _tensors(obj.query, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, out)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _tensors(v, out)
    return out


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name the same device when the current one is 0 (an index missing on one side
    matches any)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_devices(device: torch.device, **groups: Any) -> None:
    """Raise :class:`DeviceError` naming every tensor of ``groups`` (name -> tensors, batches, parameter dicts,
    episodes) that is not on ``device``. Costs about a microsecond per tensor when all is well."""
    if all(t.device == device or same_device(t.device, device) for t in _tensors(list(groups.values()), [])):
        return
    stray = [f"{path} on {t.device}" for group, obj in groups.items() for path, t in named_tensors(obj, group)
             if not same_device(t.device, device)]
    shown = ", ".join(stray[:6]) + (f" and {len(stray) - 6} more" if len(stray) > 6 else "")
    raise DeviceError(f"{len(stray)} tensor(s) are not on the model's device {device}: {shown}")
