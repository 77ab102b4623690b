"""Options of the fraud vertical: the claims-file data options (:class:`data_adapters.fraud_claims.FraudData`)
plus the MLP and loss options of this vertical."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.site_statistics import SiteStatisticsOption
from data_adapters.fraud_claims import FraudData


@dataclass
class FraudConfig(FraudData, SiteStatisticsOption):
    """Data options of the fraud vertical plus its model options."""

    hidden: list[int] = field(default_factory=lambda: [64, 32])
    """Hidden widths of the MLP."""
    loss: str = "bce"
    """Training loss: bce (pos_weight-weighted binary cross-entropy) or focal."""
    pos_weight: float = 1.0
    """Weight of fraud rows in bce (episodes are balanced, so 1 = balanced)."""
    focal_gamma: float = 2.0
    """Focusing exponent of the focal loss."""
    focal_alpha: float = 0.5
    """Weight of frauds in the focal loss (0.5 = symmetric)."""
