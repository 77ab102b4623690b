"""Demo vertical: few-shot handwritten digits (R1), data shipped with scikit-learn.

One file (plus ``presets/``): a demo whose config, model and metrics are a few lines of core building blocks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import nn

from core.losses import cross_entropy
from core.metrics import accuracy_metrics
from core.problem import SupervisedProblem
from core.seeds import site_seed
from core.tasks import EpisodeSpec, Federation, Site
from core.vertical import VerticalSpec, register_vertical
from data_adapters.digits import DigitsData, build_digits_federation, load_digit_arrays, make_task_site


def make_mlp(ways: int) -> nn.Module:
    """The R1 model: MLP 64-128-128-ways with ReLU."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, ways))


def problem_for(federation: Federation, cfg: DigitsData, shots: int = 5, query: int = 15) -> SupervisedProblem:
    return SupervisedProblem(
        federation=federation,
        model_factory=lambda: make_mlp(cfg.ways),
        criterion=cross_entropy,
        metrics=accuracy_metrics,
        headline="accuracy",
        train_spec=EpisodeSpec(shots=shots, query=query, by="class", num_classes=cfg.ways),
        eval_by="class",
        num_classes=cfg.ways,
        preprocessing={"ways": cfg.ways, "scale": 16.0},
        site_specific=("4.weight", "4.bias"),  # the head: every site has its own label mapping
    )


def prepare(cfg: DigitsData, seed: int) -> SupervisedProblem:
    return problem_for(build_digits_federation(cfg, seed), cfg)


def load_new_site(cfg: DigitsData, preprocessing: dict, site_id: Optional[str]) -> tuple[SupervisedProblem, Site]:
    """A new site = a fresh N-way task (seeded by ``site_id``) over the bundled digits."""
    x, y = load_digit_arrays()
    sid = site_id or "new-site"
    seed = site_seed(sid)
    site = make_task_site(sid, x, y, int(preprocessing.get("ways", cfg.ways)), seed)
    fed = Federation({sid: site}, {"test": [sid]})
    return problem_for(fed, cfg), site


SPEC = register_vertical(
    VerticalSpec(
        name="digits",
        description="Demo: few-shot handwritten digits, each site its own 5-way task (scikit-learn's bundled data)",
        data_config=DigitsData,
        prepare=prepare,
        load_new_site=load_new_site,
        presets_dir=Path(__file__).parent / "presets",
        onboard_args="--site NEW_SITE_ID",
    )
)
