"""Medical-imaging vertical: few-shot adaptation of a diagnostic image classifier to a new clinic.

Clinics cannot pool patient images and differ in scanners, protocols and patient mix. The FML
algorithms meta-learn, across clinics, an initialization that a new clinic adapts with a few labelled
images per class. Data (``data.path``, chosen by suffix through :data:`LOADERS`):

- a MedMNIST-format ``.npz`` (default: PneumoniaMNIST from ``$FML_PNEUMONIA_NPZ`` or
  ``$FML_DATA_DIR/pneumoniamnist/pneumoniamnist.npz``, ``FML_DATA_DIR`` defaulting to ``../shared/data``
  from the repository root). It has no hospital ids, so clinics are SIMULATED
  (:mod:`data_adapters.clinic_simulation`: Dirichlet label skew + a fixed MONAI acquisition profile per
  clinic; some test clinics use a protocol absent from training);
- a CSV/Parquet manifest of image files (:mod:`data_adapters.image_manifest`), with real sites when it
  has a site column (clinics are simulated otherwise) and patient-disjoint draws when it has patient ids;
- if no data is found at all, a clearly labelled GENERATED image set (:mod:`data_adapters.generated_images`)
  so that a fresh clone runs; a warning says so and the run's preprocessing records it.

Model, metrics, thresholds and augmentation: see ``models.py``, ``metrics.py``, ``problem.py``,
``augment.py`` in this package.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from core.site_statistics import SiteStatisticsOption
from core.losses import cross_entropy
from core.registry import Registry
from core.tasks import EpisodeSpec, Federation, Site, SiteDataError, site_seed
from core.vertical import VerticalSpec, register_vertical
from data_adapters.clinic_simulation import ClinicSimulation, apply_profile, make_profile, simulate_clinics
from data_adapters.generated_images import GENERATED_SOURCE, generate_images
from data_adapters.image_manifest import ManifestColumns, check_site_counts, load_manifest
from data_adapters.medmnist import ImageDataError, check_labels, load_medmnist
from verticals.medical_imaging.metrics import imaging_metrics
from verticals.medical_imaging.models import ModelSpec, build_model
from verticals.medical_imaging.problem import ImagingProblem, patient_split

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ImagingData(SiteStatisticsOption):
    """Data, model and episode options of the medical-imaging vertical."""

    path: Optional[str] = None
    """MedMNIST .npz or .csv/.parquet manifest. None: $FML_PNEUMONIA_NPZ, else $FML_DATA_DIR/pneumoniamnist/
    pneumoniamnist.npz (FML_DATA_DIR defaults to ../shared/data from the repo root), else GENERATED images."""
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    """MedMNIST splits pooled before clinics are simulated."""
    classes: list[str] = field(default_factory=list)
    """Declared class names (manifest labels may then be names); empty: integer class ids."""
    num_classes: Optional[int] = None
    """Declared class count (labels outside 0..num_classes-1 are errors); None: inferred."""
    image_size: int = 28
    """Square size manifest images are resized to (MedMNIST arrays keep their size)."""
    cache_dir: Optional[str] = None
    """MONAI PersistentDataset cache of decoded manifest images (None: no disk cache)."""
    columns: ManifestColumns = field(default_factory=ManifestColumns)
    """Manifest column names."""
    simulation: ClinicSimulation = field(default_factory=ClinicSimulation)
    """Simulated clinics (data without a site column)."""
    validation_sites: int = 2
    """Manifest with real sites: validation sites drawn by the seed."""
    test_sites: int = 2
    """Manifest with real sites: test sites (named ones first, then drawn by the seed)."""
    test_site_ids: list[str] = field(default_factory=list)
    """Manifest with real sites: sites that must be test sites."""
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
    """group | instance | batch (BatchNorm without running stats); see verticals/medical_imaging/models.py."""
    augment_copies: int = 0
    """MONAI-augmented copies added per support image (0: no augmentation)."""
    threshold: str = "support"
    """Binary decision threshold: support (Youden's J on the support set) or fixed (probability 0.5)."""
    onboard_protocol: Optional[str] = None
    """Onboarding a .npz only: acquire its images with this simulated protocol (standard | inverted | low_dose)."""
    generated_per_class: int = 800
    """GENERATED fallback: images per class."""

    def __post_init__(self) -> None:  # configs restored from JSON hold dicts for nested options
        if isinstance(self.columns, dict):
            self.columns = ManifestColumns(**self.columns)
        if isinstance(self.simulation, dict):
            self.simulation = ClinicSimulation(**self.simulation)


@dataclass
class ImagePool:
    """Images read from one source, before clinics are formed."""

    x: Tensor
    y: Tensor
    num_classes: int
    class_names: list[str]
    source: str
    sites: Optional[list[str]] = None
    patients: Optional[Tensor] = None
    generated: bool = False

    def site(self, site_id: str, rows: Tensor) -> Site:
        groups = self.patients[rows] if self.patients is not None else None
        return Site(site_id, self.x[rows], self.y[rows], groups=groups, metadata={"source": self.source})


def default_npz() -> Path:
    """$FML_PNEUMONIA_NPZ, else $FML_DATA_DIR (default ``<repo>/../shared/data``)/pneumoniamnist/pneumoniamnist.npz."""
    if os.environ.get("FML_PNEUMONIA_NPZ"):
        return Path(os.environ["FML_PNEUMONIA_NPZ"])
    data_dir = Path(os.environ.get("FML_DATA_DIR") or (REPO_ROOT / ".." / "shared" / "data"))
    return (data_dir / "pneumoniamnist" / "pneumoniamnist.npz").resolve()


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    from monai.transforms import Resize

    n, c, h, w = x.shape
    return torch.as_tensor(Resize((size, size), mode="area")(x.reshape(n * c, h, w))).reshape(n, c, size, size).float()


def _from_npz(cfg: ImagingData, path: Path, expect: dict) -> ImagePool:
    arrays = load_medmnist(path, splits=cfg.splits, num_classes=expect.get("num_classes", cfg.num_classes),
                           class_names=expect.get("class_names", cfg.classes))
    x = _resize(arrays.x, expect["image_size"]) if "image_size" in expect else arrays.x
    return ImagePool(x, arrays.y, arrays.num_classes, arrays.class_names or [str(i) for i in range(arrays.num_classes)],
                     str(path))


def _from_manifest(cfg: ImagingData, path: Path, expect: dict) -> ImagePool:
    m = load_manifest(path, columns=cfg.columns, classes=expect.get("class_names", cfg.classes),
                      num_classes=expect.get("num_classes", cfg.num_classes),
                      image_size=expect.get("image_size", cfg.image_size), channels=expect.get("channels"),
                      cache_dir=cfg.cache_dir)
    return ImagePool(m.x, m.y, m.num_classes, m.class_names, str(path), m.sites, m.patients)


def _generated(cfg: ImagingData, path: Path, expect: dict) -> ImagePool:
    arrays = generate_images(per_class=cfg.generated_per_class, size=expect.get("image_size", 28), seed=0)
    return ImagePool(arrays.x, arrays.y, 2, arrays.class_names, GENERATED_SOURCE, generated=True)


#: data kind (file suffix or ``generated``) -> ``loader(cfg, path, expect) -> ImagePool``; ``expect`` holds
#: the saved preprocessing's requirements at onboarding (classes, channels, image size).
LOADERS: Registry[Callable[[ImagingData, Path, dict], ImagePool]] = Registry("image data format")
LOADERS.register(".npz", _from_npz)
LOADERS.register(".csv", _from_manifest)
LOADERS.register(".parquet", _from_manifest)
LOADERS.register(".pq", _from_manifest)
LOADERS.register("generated", _generated)


def resolve_source(cfg: ImagingData) -> tuple[str, Path]:
    """(data kind, path): ``cfg.path`` by suffix, else the default PneumoniaMNIST, else GENERATED (warns)."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        kind = "".join(path.suffixes[-1:]).lower()
        if kind not in LOADERS:
            raise ImageDataError(f"data.path {path}: unsupported file type {kind!r}; give a MedMNIST .npz or a "
                                 ".csv/.parquet manifest")
        if not path.is_file():
            raise ImageDataError(f"data.path {path} does not exist")
        return kind, path
    path = default_npz()
    if path.is_file():
        return ".npz", path
    message = (f"medical_imaging: no image data at {path} (set FML_PNEUMONIA_NPZ or FML_DATA_DIR, or pass "
               "--data.path); using a GENERATED synthetic image dataset: its numbers are NOT medical results")
    warnings.warn(message, stacklevel=2)
    log.warning(message)
    return "generated", path


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


def _federation(cfg: ImagingData, pool: ImagePool, seed: int) -> Federation:
    if pool.sites is not None:
        ids = sorted(set(pool.sites))
        rows = {sid: torch.tensor([i for i, s in enumerate(pool.sites) if s == sid]) for sid in ids}
        sites = [pool.site(sid, rows[sid]) for sid in ids]
        return Federation.split(sites, validation=cfg.validation_sites, test=cfg.test_sites, seed=seed,
                                test_ids=cfg.test_site_ids)
    sim_seed = seed if cfg.simulation.seed is None else cfg.simulation.seed
    sim = simulate_clinics(pool.x, pool.y, cfg.simulation, sim_seed, groups=pool.patients)
    for site in sim.sites:
        site.metadata["source"] = pool.source
    return Federation.split(sim.sites, validation=cfg.simulation.validation_clinics, test=len(sim.test_ids),
                            seed=seed, test_ids=sim.test_ids)


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
    kind, path = resolve_source(cfg)
    pool = LOADERS.get(kind)(cfg, path, {})
    federation = _federation(cfg, pool, seed)
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
    kind, path = resolve_source(cfg)
    expect = {k: preprocessing[k] for k in ("num_classes", "class_names", "channels", "image_size") if k in preprocessing}
    pool = LOADERS.get(kind)(cfg, path, expect)
    check_labels(pool.y, int(preprocessing["num_classes"]), str(path))
    if int(pool.x.shape[1]) != int(preprocessing["channels"]):
        raise ImageDataError(f"{path}: images have {pool.x.shape[1]} channel(s) but the registered model expects "
                             f"{preprocessing['channels']}; convert the images")
    if pool.sites is not None:
        present = sorted(set(pool.sites))
        if site_id is None and len(present) > 1:
            raise SiteDataError(f"{path} holds sites {present}; choose one with --site")
        sid = site_id or present[0]
        if sid not in present:
            raise SiteDataError(f"site {sid!r} is not in {path}; its sites are {present}")
        site = pool.site(sid, torch.tensor([i for i, s in enumerate(pool.sites) if s == sid]))
    else:
        sid = site_id or path.stem
        site = pool.site(sid, torch.arange(pool.x.shape[0]))
        if cfg.onboard_protocol:
            profile = make_profile(cfg.onboard_protocol, seed=site_seed(sid), severity=cfg.simulation.severity)
            site = dataclasses.replace(site, x=apply_profile(site.x, profile),
                                       metadata={**site.metadata, "protocol": cfg.onboard_protocol, "simulated": True})
    check_site_counts(site, int(preprocessing["num_classes"]), 2, preprocessing.get("class_names", ()))
    return problem_for(Federation({sid: site}, {"test": [sid]}), preprocessing, cfg), site


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
    )
)
