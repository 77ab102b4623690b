"""Options of the maintenance vertical: the fleet data options (:class:`data_adapters.cmapss.CmapssConfig`)
plus the episode and model options of this vertical."""
from __future__ import annotations

from dataclasses import dataclass

from core.site_statistics import SiteStatisticsOption
from data_adapters.cmapss import CmapssConfig


@dataclass
class MaintenanceData(CmapssConfig, SiteStatisticsOption):
    """Data, episode and model options of the maintenance vertical."""

    model: str = "cnn"
    """Model over windows: cnn (1D-CNN, default), dcnn (the deeper published C-MAPSS CNN) or gru."""
    channels: int = 16
    """Convolution channels of the 1D-CNN."""
    hidden: int = 32
    """Hidden width (CNN head / GRU state)."""
    kernel: int = 5
    """Temporal kernel size of the 1D-CNN."""
    context_dim: int = 0
    """Context vector the model reads beside the sensors (CAVIA; the `cavia` algorithm and the `context` recipe
    adapt only it); 0 = none."""
    train_units: int = 2
    """Support units (engines) per meta-training episode."""
    query_units: int = 2
    """Query units per meta-training episode."""
    windows_per_unit: int = 32
    """Windows drawn per unit in a meta-training episode (equal shapes across clients -> one vmap call)."""
    support_windows: int = 64
    """Windows per support unit at evaluation and onboarding, evenly spaced incl. the last (0 = all)."""
