"""Demo vertical: MAML's sine-wave regression (generated data).

One file (plus ``presets/``): a demo whose config, model and metrics are a few lines of core building blocks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from core.metrics import mse_metrics
from core.problem import SupervisedProblem
from core.seeds import site_seed
from core.tasks import EpisodeSpec, Federation, Site
from core.vertical import VerticalSpec, register_vertical
from data_adapters.sine import SineData, build_sine_federation, make_sine_site


def make_sine_mlp() -> nn.Module:
    """MAML's sine model: MLP 1-40-40-1 with ReLU."""
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def mse_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - y) ** 2)


def problem_for(federation: Federation, shots: int = 10, query: int = 10) -> SupervisedProblem:
    return SupervisedProblem(
        federation=federation,
        model_factory=make_sine_mlp,
        criterion=mse_loss,
        metrics=mse_metrics,
        headline="mse",
        higher_is_better=False,
        train_spec=EpisodeSpec(shots=shots, query=query, by="row"),
        eval_by="row",
    )


def prepare(cfg: SineData, seed: int) -> SupervisedProblem:
    return problem_for(build_sine_federation(cfg, seed))


def load_new_site(cfg: SineData, preprocessing: dict, site_id: Optional[str]) -> tuple[SupervisedProblem, Site]:
    sid = site_id or "new-sine"
    gen = torch.Generator().manual_seed(site_seed(sid))
    site = make_sine_site(sid, gen, cfg.points_per_site)
    return problem_for(Federation({sid: site}, {"test": [sid]})), site


SPEC = register_vertical(
    VerticalSpec(
        name="sine",
        description="Demo: MAML's sine-wave regression, one sinusoid per site (generated data)",
        data_config=SineData,
        prepare=prepare,
        load_new_site=load_new_site,
        presets_dir=Path(__file__).parent / "presets",
        onboard_args="--site NEW_SITE_ID",
    )
)
