"""Small CPU-friendly RUL regressors over sensor windows ``[batch, window, sensors]`` -> RUL ``[batch]``.

Both are plain ``nn.Module``s without normalization-layer state, so ``torch.func.functional_call``
and ``vmap`` carry them (see ``STYLE.md``). Outputs are in cycles: the network predicts
``RUL / rul_cap`` and the module multiplies by the fixed ``rul_cap`` (a Python float, not a parameter).
With ``context_dim`` > 0 each reads a zero-initialized context vector (CAVIA, :mod:`core.context`) appended
to the sensors at every time step: an operator's offsets and gains can be absorbed by a few numbers.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.context import ContextVector
from core.registry import Registry


class SameConv1d(nn.Conv1d):
    """``nn.Conv1d(..., padding="same")`` over time, bit for bit, for an even kernel too: torch pads an even
    kernel's extra zero on the right and then convolves with the symmetric padding, printing a warning about the
    padded copy each run; this does the same two steps itself, silently. Same parameters, same state-dict keys."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        left = (kernel_size - 1) // 2
        super().__init__(in_channels, out_channels, kernel_size, padding=left)
        self.right_extra = (kernel_size - 1) - 2 * left  # 1 for an even kernel, else 0

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.right_extra:
            input = F.pad(input, (0, self.right_extra))
        return super()._conv_forward(input, weight, bias)


class RulCNN(nn.Module):
    """1D-CNN: two ``Conv1d`` layers over time (channels = sensors), then a small MLP on the flattened maps.

    Args:
        sensors: input channels. window: window length. channels: conv channels. hidden: MLP width.
        kernel: temporal kernel size. rul_cap: output scale (cycles). context_dim: context vector (0 = none).
    """

    def __init__(self, sensors: int, window: int, channels: int = 16, hidden: int = 32, kernel: int = 5,
                 rul_cap: float = 125.0, context_dim: int = 0) -> None:
        super().__init__()
        self.context = ContextVector(context_dim) if context_dim > 0 else None
        # "same": the maps keep the window's length for an even kernel too (kernel // 2 made them one longer)
        self.conv = nn.Sequential(
            SameConv1d(sensors + context_dim, channels, kernel), nn.ReLU(),
            SameConv1d(channels, channels, kernel), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * window, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.rul_cap = float(rul_cap)
        with torch.no_grad():
            self.head[-1].bias.fill_(0.6)  # start near the mean capped RUL instead of 0

    def forward(self, x: Tensor) -> Tensor:
        """``x [batch, window, sensors]`` -> RUL ``[batch]`` (cycles)."""
        x = x if self.context is None else self.context(x)
        return self.head(self.conv(x.transpose(1, 2))).squeeze(-1) * self.rul_cap


class RulGRU(nn.Module):
    """One-layer GRU written with ``nn.Linear`` gates (vmap-friendly, unlike cuDNN/ATen ``nn.GRU``); last state -> RUL.

    Args:
        sensors: input features. window: unused (any length). hidden: state size. rul_cap: output scale.
        context_dim: context vector (0 = none).
    """

    def __init__(self, sensors: int, window: int, hidden: int = 32, rul_cap: float = 125.0, context_dim: int = 0,
                 **_: int) -> None:
        super().__init__()
        self.context = ContextVector(context_dim) if context_dim > 0 else None
        self.inp = nn.Linear(sensors + context_dim, 3 * hidden)
        self.rec = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.rul_cap = float(rul_cap)
        with torch.no_grad():
            self.out.bias.fill_(0.6)

    def forward(self, x: Tensor) -> Tensor:
        gates_x = self.inp(x if self.context is None else self.context(x))  # [b, T, 3h]
        h = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            xr, xz, xn = gates_x[:, t].chunk(3, dim=-1)
            hr, hz, hn = self.rec(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        return self.out(h).squeeze(-1) * self.rul_cap


class RulDCNN(nn.Module):
    """The deep 1D-CNN published for C-MAPSS (Li, Ding & Sun, Reliab. Eng. Syst. Saf. 2018): four convolutions of
    10 filters of length 10 over time, one of 1 filter of length 3, tanh throughout, then 100 tanh units on the
    flattened map. Their configuration as published (their dropout left out: a functional model samples no masks),
    so ``channels`` / ``hidden`` / ``kernel`` do not apply.

    Args:
        sensors: input channels. window: window length. rul_cap: output scale (cycles). context_dim: context vector.
    """

    def __init__(self, sensors: int, window: int, rul_cap: float = 125.0, context_dim: int = 0, **_: int) -> None:
        super().__init__()
        self.context = ContextVector(context_dim) if context_dim > 0 else None
        widths = [sensors + context_dim, 10, 10, 10, 10]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [SameConv1d(width_in, width_out, 10), nn.Tanh()]
        self.conv = nn.Sequential(*layers, SameConv1d(10, 1, 3), nn.Tanh())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(window, 100), nn.Tanh(), nn.Linear(100, 1))
        self.rul_cap = float(rul_cap)
        with torch.no_grad():
            self.head[-1].bias.fill_(0.6)

    def forward(self, x: Tensor) -> Tensor:
        """``x [batch, window, sensors]`` -> RUL ``[batch]`` (cycles)."""
        x = x if self.context is None else self.context(x)
        return self.head(self.conv(x.transpose(1, 2))).squeeze(-1) * self.rul_cap


MODELS: Registry[Callable[..., nn.Module]] = Registry("maintenance model")
MODELS.register("cnn", RulCNN)
MODELS.register("gru", RulGRU)
MODELS.register("dcnn", RulDCNN)


def build_model(spec: dict) -> nn.Module:
    """A model from the JSON-able spec saved in ``preprocessing['model']``."""
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    return MODELS.get(spec["kind"])(**kwargs)
