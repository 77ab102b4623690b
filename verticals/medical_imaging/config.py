"""Options of the medical-imaging vertical: the data options of :class:`data_adapters.imaging.ImageData`
plus the episode and model options of this vertical."""
from __future__ import annotations

from dataclasses import dataclass

from core.site_statistics import SiteStatisticsOption
from data_adapters.imaging import ImageData


@dataclass
class ImagingData(ImageData, SiteStatisticsOption):
    """Data, model and episode options of the medical-imaging vertical."""

    required_per_class: int = 11
    """Images per class every clinic must have (largest evaluation shots + 1); checked before training."""
    train_shots: int = 5
    """Support images per class of a meta-training episode."""
    train_query: int = 10
    """Query images per class of a meta-training episode."""
    model: str = "small_cnn"
    """small_cnn | resnet18 | efficientnet_b0 | monai_classifier | monai_densenet | timm:<name>."""
    width: int = 16
    """Base width of small_cnn and the MONAI nets."""
    norm: str = "group"
    """group | instance | batch (BatchNorm without running stats); see verticals/medical_imaging/model.py."""
    augment_copies: int = 0
    """MONAI-augmented copies added per support image (0: no augmentation)."""
    threshold: str = "support"
    """Binary decision threshold: support (Youden's J on the support set) or fixed (probability 0.5)."""
