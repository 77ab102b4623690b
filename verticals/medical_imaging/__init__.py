"""Medical-imaging vertical: few-shot adaptation of a diagnostic image classifier to a new clinic.

Clinics cannot pool patient images and differ in scanners, protocols and patient mix. The FML
algorithms meta-learn, across clinics, an initialization that a new clinic adapts with a few labelled
images per class. The images and clinics come from :mod:`data_adapters.imaging` (a MedMNIST ``.npz``
with simulated clinics, a manifest of image files with real or simulated clinics, or a GENERATED set
when no data is found).

Files: ``config.py``, ``model.py``, ``problem.py``, ``metrics.py``, ``presets/``, this module (checks the
clinics against the episodes; registration), and ``augment.py`` (MONAI augmentation of the support set).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from core.losses import cross_entropy
from core.tasks import EpisodeSpec, Federation, Site
from core.vertical import VerticalSpec, register_vertical
from data_adapters.image_manifest import check_site_counts
from data_adapters.imaging import ImagePool, build_federation, load_new_clinic, load_pool
from verticals.medical_imaging.config import ImagingData
from verticals.medical_imaging.metrics import imaging_metrics
from verticals.medical_imaging.model import ModelSpec, build_model
from verticals.medical_imaging.problem import ImagingProblem, patient_split

log = logging.getLogger(__name__)


def model_spec(preprocessing: dict) -> ModelSpec:
    m = preprocessing["model"]
    return ModelSpec(m["name"], int(preprocessing["channels"]), int(preprocessing["num_classes"]),
                     int(preprocessing["image_size"]), int(m["width"]), m["norm"])


def problem_for(federation: Federation, preprocessing: dict, cfg: ImagingData) -> ImagingProblem:
    spec = model_spec(preprocessing)
    k = spec.num_classes

    def factory() -> nn.Module:
        return build_model(spec)

    return ImagingProblem(
        federation=federation, model_factory=factory, criterion=cross_entropy,
        metrics=imaging_metrics, headline="auroc",
        train_spec=EpisodeSpec(shots=cfg.train_shots, query=cfg.train_query, by="class", num_classes=k),
        eval_by="class", num_classes=k, higher_is_better=True, preprocessing=preprocessing,
        augment_copies=int(preprocessing.get("augment_copies", cfg.augment_copies)),
        threshold=preprocessing.get("threshold", cfg.threshold),
    )


def _preprocessing(cfg: ImagingData, pool: ImagePool) -> dict[str, Any]:
    build_model(ModelSpec(cfg.model, int(pool.x.shape[1]), pool.num_classes, int(pool.x.shape[-1]), cfg.width, cfg.norm))
    return {"num_classes": pool.num_classes, "class_names": pool.class_names, "channels": int(pool.x.shape[1]),
            "image_size": int(pool.x.shape[-1]), "intensity": "[0, 1] (uint8 / 255, else min-max)",
            "model": {"name": cfg.model, "width": cfg.width, "norm": cfg.norm}, "threshold": cfg.threshold,
            "augment_copies": cfg.augment_copies, "data_source": pool.source, "generated": pool.generated}


def _check_patient_draws(federation: Federation, num_classes: int, cfg: ImagingData) -> None:
    """With patient ids, counts alone do not guarantee a patient-disjoint draw: try one per site now
    (training sites: a training episode; other sites: the largest shots) so it fails before training."""
    for role, ids in federation.roles.items():
        shots, query = (cfg.train_shots, cfg.train_query) if role == "train" else (cfg.required_per_class - 1, None)
        for sid in ids:
            site = federation.sites[sid]
            if site.groups is not None:
                patient_split(site, shots, query, num_classes, torch.Generator().manual_seed(0))


def prepare(cfg: ImagingData, seed: int) -> ImagingProblem:
    """Read and validate the images, form the clinics and their roles; every check runs before training."""
    pool, _ = load_pool(cfg)
    federation = build_federation(cfg, pool, seed)
    names = pool.class_names
    for site in federation.sites.values():
        check_site_counts(site, pool.num_classes, cfg.required_per_class, names)
    for site in federation.role("train"):
        check_site_counts(site, pool.num_classes, cfg.train_shots + cfg.train_query, names)
    _check_patient_draws(federation, pool.num_classes, cfg)
    problem = problem_for(federation, _preprocessing(cfg, pool), cfg)
    log.info("medical_imaging: %s -> %s", pool.source, federation.describe())
    return problem


def load_new_site(cfg: ImagingData, preprocessing: dict, site_id: Optional[str]) -> tuple[ImagingProblem, Site]:
    """One new clinic's labelled images (``cfg.path``: a .npz or a manifest) with the SAVED preprocessing.

    The classes, channel count and image size must match the registered model's; a manifest with
    several sites needs ``site_id`` (``fml onboard --site``). A ``.npz`` is one clinic (its ``splits``
    pooled), optionally acquired with ``cfg.onboard_protocol`` (a simulation, for demonstrations).
    """
    site, _ = load_new_clinic(cfg, preprocessing, site_id)
    check_site_counts(site, int(preprocessing["num_classes"]), 2, preprocessing.get("class_names", ()))
    return problem_for(Federation({site.site_id: site}, {"test": [site.site_id]}), preprocessing, cfg), site


SPEC = register_vertical(
    VerticalSpec(
        name="medical_imaging",
        description="Few-shot adaptation of an image classifier to a new clinic (MONAI; MedMNIST .npz with "
                    "simulated clinics, or a manifest of PNG/JPEG/NIfTI/DICOM files); AUROC headline",
        data_config=ImagingData,
        prepare=prepare,
        load_new_site=load_new_site,
        presets_dir=Path(__file__).parent / "presets",
        onboard_flags={"protocol": "onboard_protocol"},
        schema=lambda problem: {k: problem.preprocessing[k] for k in ("num_classes", "class_names", "channels",
                                                                     "image_size")},
    )
)
