"""Images as a federation of clinics: where they are, how each format is read, how clinics and roles are formed.

Data (``data.path``, chosen by suffix through :data:`LOADERS`):

- a MedMNIST-format ``.npz`` (default: PneumoniaMNIST at ``$FML_PNEUMONIA_NPZ``, else
  ``pneumoniamnist/pneumoniamnist.npz`` under the data folder, :func:`data_adapters.sources.data_dir`).
  It has no hospital ids, so clinics are SIMULATED (:mod:`data_adapters.clinic_simulation`: Dirichlet
  label skew + a fixed MONAI acquisition profile per clinic; some test clinics use a protocol absent
  from training);
- a CSV/Parquet manifest of image files (:mod:`data_adapters.image_manifest`), with real sites when it
  has a site column (clinics are simulated otherwise) and patient-disjoint draws when it has patient ids;
- if no data is found at all, a clearly labelled GENERATED image set (:mod:`data_adapters.generated_images`)
  so that a fresh clone runs (one :class:`~data_adapters.sources.GeneratedDataWarning`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional

import torch
from torch import Tensor

from core.registry import Registry
from core.seeds import site_seed
from core.tasks import Federation, Site, SiteDataError
from data_adapters.clinic_simulation import ClinicSimulation, apply_profile, make_profile, simulate_clinics
from data_adapters.generated_images import GENERATED_SOURCE, generate_images
from data_adapters.image_manifest import ManifestColumns, load_manifest
from data_adapters.medmnist import ImageDataError, check_labels, load_medmnist
from data_adapters.sources import locate, warn_generated

DEFAULT_NPZ = Path("pneumoniamnist") / "pneumoniamnist.npz"


@dataclass
class ImageData:
    """Where the images are, how they are read, and how clinics and their roles are formed."""

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
    onboard_protocol: Optional[str] = None
    """Onboarding a .npz only: acquire its images with this simulated protocol (standard | inverted | low_dose)."""
    generated_per_class: int = 800
    """GENERATED fallback: images per class."""

    #: the options that choose the images and their classes: changing one registers under another model name
    DATASET_OPTIONS: ClassVar[tuple[str, ...]] = ("path", "splits", "classes", "num_classes", "image_size", "columns")

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

    def rows_of(self, site_id: str) -> Tensor:
        return torch.tensor([i for i, s in enumerate(self.sites or ()) if s == site_id])


def default_npz() -> Path:
    """$FML_PNEUMONIA_NPZ, else $FML_DATA_DIR (default ``<repo>/../shared/data``)/pneumoniamnist/pneumoniamnist.npz."""
    return locate(DEFAULT_NPZ, "FML_PNEUMONIA_NPZ")


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    from monai.transforms import Resize

    n, c, h, w = x.shape
    resized = Resize((size, size), mode="area")(x.reshape(n * c, h, w)).as_subclass(torch.Tensor)  # no MetaTensor
    return resized.reshape(n, c, size, size).float()


def _from_npz(cfg: ImageData, path: Path, expect: dict) -> ImagePool:
    arrays = load_medmnist(path, splits=cfg.splits, num_classes=expect.get("num_classes", cfg.num_classes),
                           class_names=expect.get("class_names", cfg.classes))
    x = _resize(arrays.x, expect["image_size"]) if "image_size" in expect else arrays.x
    return ImagePool(x, arrays.y, arrays.num_classes, arrays.class_names or [str(i) for i in range(arrays.num_classes)],
                     str(path))


def _from_manifest(cfg: ImageData, path: Path, expect: dict) -> ImagePool:
    m = load_manifest(path, columns=cfg.columns, classes=expect.get("class_names", cfg.classes),
                      num_classes=expect.get("num_classes", cfg.num_classes),
                      image_size=expect.get("image_size", cfg.image_size), channels=expect.get("channels"),
                      cache_dir=cfg.cache_dir)
    return ImagePool(m.x, m.y, m.num_classes, m.class_names, str(path), m.sites, m.patients)


def _generated(cfg: ImageData, path: Path, expect: dict) -> ImagePool:
    arrays = generate_images(per_class=cfg.generated_per_class, size=expect.get("image_size", 28), seed=0)
    return ImagePool(arrays.x, arrays.y, 2, arrays.class_names, GENERATED_SOURCE, generated=True)


#: data kind (file suffix or ``generated``) -> ``loader(cfg, path, expect) -> ImagePool``; ``expect`` holds
#: the saved preprocessing's requirements at onboarding (classes, channels, image size).
LOADERS: Registry[Callable[[ImageData, Path, dict], ImagePool]] = Registry("image data format")
LOADERS.register(".npz", _from_npz)
LOADERS.register(".csv", _from_manifest)
LOADERS.register(".parquet", _from_manifest)
LOADERS.register(".pq", _from_manifest)
LOADERS.register("generated", _generated)


def resolve_source(cfg: ImageData) -> tuple[str, Path]:
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
    warn_generated("PneumoniaMNIST", path, "a GENERATED synthetic image dataset",
                   "Set FML_PNEUMONIA_NPZ (the file) or FML_DATA_DIR, or pass --data.path.")
    return "generated", path


def load_pool(cfg: ImageData, expect: Optional[dict] = None) -> tuple[ImagePool, Path]:
    """The images of ``cfg``'s source and its path; ``expect``: a registered model's requirements (onboarding)."""
    kind, path = resolve_source(cfg)
    return LOADERS.get(kind)(cfg, path, expect or {}), path


def build_federation(cfg: ImageData, pool: ImagePool, seed: int) -> Federation:
    """Clinics and roles: the manifest's own sites (roles drawn with ``seed``), else simulated clinics."""
    if pool.sites is not None:
        sites = [pool.site(sid, pool.rows_of(sid)) for sid in sorted(set(pool.sites))]
        return Federation.split(sites, validation=cfg.validation_sites, test=cfg.test_sites, seed=seed,
                                test_ids=cfg.test_site_ids)
    sim_seed = seed if cfg.simulation.seed is None else cfg.simulation.seed
    sim = simulate_clinics(pool.x, pool.y, cfg.simulation, sim_seed, groups=pool.patients)
    for site in sim.sites:
        site.metadata["source"] = pool.source
    return Federation.split(sim.sites, validation=cfg.simulation.validation_clinics, test=len(sim.test_ids),
                            seed=seed, test_ids=sim.test_ids)


def load_new_clinic(cfg: ImageData, preprocessing: dict, site_id: Optional[str]) -> tuple[Site, Path]:
    """One new clinic's labelled images (``cfg.path``: a .npz or a manifest) read as the SAVED preprocessing
    requires (classes, channels, image size), and its path.

    A manifest with several sites needs ``site_id``; a ``.npz`` is one clinic (its ``splits`` pooled),
    optionally acquired with ``cfg.onboard_protocol`` (a simulation, for demonstrations).
    """
    expect = {k: preprocessing[k] for k in ("num_classes", "class_names", "channels", "image_size") if k in preprocessing}
    pool, path = load_pool(cfg, expect)
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
        return pool.site(sid, pool.rows_of(sid)), path
    sid = site_id or path.stem
    site = pool.site(sid, torch.arange(pool.x.shape[0]))
    if cfg.onboard_protocol:
        profile = make_profile(cfg.onboard_protocol, seed=site_seed(sid), severity=cfg.simulation.severity)
        site = dataclasses.replace(site, x=apply_profile(site.x, profile),
                                   metadata={**site.metadata, "protocol": cfg.onboard_protocol, "simulated": True})
    return site, path
