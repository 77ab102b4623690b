"""Users' own images, listed in a manifest (CSV or Parquet), loaded with MONAI.

A manifest has one row per image and the columns (names configurable):

- ``path``: image file, absolute or relative to the manifest's folder. PNG and JPEG (PIL), NIfTI
  (``.nii``/``.nii.gz``, nibabel) and DICOM (``.dcm``, pydicom) are read by MONAI's ``LoadImaged``.
- ``label``: class id (``0..K-1``) or, when class names are declared, a class name.
- ``site``: the clinic the image comes from (optional: without it the caller simulates clinics).
- ``patient_id`` (optional): images of one patient are kept together; few-shot draws never put a
  patient's images in both the support and the scored query (``Site.groups`` holds the patient code).

Every image goes through one MONAI dictionary pipeline: ``LoadImaged`` (readers set so rows/columns
keep the file's array order for every format) with ``EnsureChannelFirstd``, a 3D volume reduced to its
middle slice along the last axis, ``ScaleIntensityd`` (per-image min-max to ``[0, 1]``), ``Resized`` to
``image_size`` x ``image_size`` (area averaging) and ``EnsureTyped``. With ``cache_dir`` the result of
that pipeline is cached on disk by MONAI's ``PersistentDataset`` (keyed by path, size and modification
time), so re-runs and onboarding skip decoding; within one run the images live in memory as tensors.

Everything is validated BEFORE training, and every problem of one kind is reported at once: missing
columns or empty cells (rows named), labels outside the declared classes, missing files, unreadable
files (each named with the reader's error), mixed channel counts (files named per count), and sites
with fewer images (or patients) of a class than the episodes need.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from core.tasks import Site, SiteDataError
from data_adapters.medmnist import ImageDataError
from data_adapters.sources import read_table

_LIST_MAX = 10


@dataclass
class ManifestColumns:
    """Column names of the manifest."""

    path: str = "path"
    """Image file (absolute or relative to the manifest's folder)."""
    label: str = "label"
    """Class id or declared class name."""
    site: str = "site"
    """Clinic id (if absent from the file, clinics are simulated)."""
    patient: str = "patient_id"
    """Optional patient id: a patient never straddles support and query."""


@dataclass
class ManifestImages:
    """What a manifest loads to.

    Args:
        x: images ``[n, C, S, S]`` float32 in ``[0, 1]``.
        y: class ids ``[n]``.
        sites: clinic id per row (``None`` when the manifest has no site column).
        patients: patient code per row (``None`` without a patient column).
        num_classes: class count (declared or inferred).
        class_names: names of the classes (declared, else ``["0", "1", ...]``).
        files: resolved file path per row.
    """

    x: Tensor
    y: Tensor
    sites: Optional[list[str]]
    patients: Optional[Tensor]
    num_classes: int
    class_names: list[str]
    files: list[str] = field(default_factory=list)

    def to_sites(self, min_per_class: int = 0, only: Optional[str] = None) -> list[Site]:
        """One :class:`Site` per clinic (rows of ``only`` alone if given), validated for ``min_per_class``."""
        if self.sites is None:
            raise ImageDataError("the manifest has no site column; simulate clinics or add one")
        ids = sorted(set(self.sites)) if only is None else [only]
        if only is not None and only not in set(self.sites):
            raise SiteDataError(f"site {only!r} is not in the manifest; its sites are {sorted(set(self.sites))}")
        site_arr = np.asarray(self.sites)
        out = []
        for sid in ids:
            idx = torch.as_tensor(np.flatnonzero(site_arr == sid))
            groups = self.patients[idx] if self.patients is not None else None
            site = Site(sid, self.x[idx], self.y[idx], groups=groups, metadata={
                "label_counts": torch.bincount(self.y[idx], minlength=self.num_classes).tolist(),
                "patients": int(groups.unique().numel()) if groups is not None else None})
            check_site_counts(site, self.num_classes, min_per_class, self.class_names)
            out.append(site)
        return out


def check_site_counts(site: Site, num_classes: int, min_per_class: int, class_names: Sequence[str] = ()) -> None:
    """Raise :class:`SiteDataError` when ``site`` has fewer than ``min_per_class`` images of a class,
    or (with patient groups) all images of a class from fewer than 2 patients (no support/query split)."""
    problems = []
    for c in range(num_classes):
        name = class_names[c] if c < len(class_names) else str(c)
        rows = site.y == c
        n = int(rows.sum())
        if n < min_per_class:
            problems.append(f"class {name!r}: {n} image(s), needs >= {min_per_class}")
        elif site.groups is not None and min_per_class > 0 and int(site.groups[rows].unique().numel()) < 2:
            problems.append(f"class {name!r}: all images from one patient, so no patient-disjoint support/query split")
    if problems:
        raise SiteDataError(
            f"site {site.site_id!r}: " + "; ".join(problems)
            + " (every clinic needs the largest shots + 1 image per class; add images, lower the shots, or drop the site)"
        )


def read_manifest_table(path: Path, columns: ManifestColumns) -> pd.DataFrame:
    """The manifest as strings, with required columns present and non-empty (else a precise error)."""
    if not path.is_file():
        raise ImageDataError(f"manifest {path} does not exist; pass --data PATH to a .csv or .parquet manifest")
    df = read_table(path, text=True, error=ImageDataError)
    missing = [c for c in (columns.path, columns.label) if c not in df.columns]
    if missing:
        raise ImageDataError(f"manifest {path}: missing column(s) {missing}; found {list(df.columns)}. "
                             "Rename the columns or set data.columns.*")
    for col in (columns.path, columns.label, columns.site, columns.patient):
        if col in df.columns:
            df[col] = df[col].str.strip()
            empty = np.flatnonzero((df[col] == "") | (df[col].str.lower().isin(["nan", "none"])))
            if empty.size and col != columns.patient:
                rows = (empty[:_LIST_MAX] + 2).tolist()  # +2: header line and 1-based lines
                raise ImageDataError(f"manifest {path}: column {col!r} is empty on {empty.size} row(s), file lines {rows}; fill them in")
    return df.reset_index(drop=True)


def encode_labels(values: pd.Series, classes: Sequence[str], num_classes: Optional[int], where: str) -> tuple[Tensor, list[str]]:
    """Class ids for label strings: declared names or integer ids; anything else is named in the error."""
    names = list(classes)
    if names and num_classes is not None and num_classes != len(names):
        raise ImageDataError(f"{where}: {len(names)} class names declared but num_classes={num_classes}; make them agree")
    k = len(names) if names else num_classes
    index = {n: i for i, n in enumerate(names)}
    ids, bad = [], []
    for row, v in enumerate(values.tolist()):
        if v in index:
            ids.append(index[v])
            continue
        try:
            as_float = float(v)
            i = int(as_float)
            ok = as_float == i and i >= 0 and (k is None or i < k)
        except ValueError:
            i, ok = -1, False
        if not ok:
            bad.append((row + 2, v))
        ids.append(i)
    if bad:
        allowed = f"names {names} or ids 0..{k - 1}" if names else (f"ids 0..{k - 1}" if k else "non-negative integer ids")
        shown = ", ".join(f"line {r}: {v!r}" for r, v in bad[:_LIST_MAX])
        raise ImageDataError(f"{where}: {len(bad)} label(s) outside the declared classes ({allowed}): {shown}; "
                             "fix the labels or declare the classes (data.classes / data.num_classes)")
    y = torch.tensor(ids, dtype=torch.long)
    k = k if k is not None else int(y.max()) + 1
    return y, names or [str(i) for i in range(k)]


def _to_2d(img):
    """Channel-first 2D image: squeeze a singleton depth, else take the middle slice of a 3D volume."""
    if img.ndim == 4:
        img = img[..., img.shape[-1] // 2]
    if img.ndim != 3:
        raise ValueError(f"expected a 2D image or 3D volume, got array shape {tuple(img.shape)}")
    return img


def image_pipeline(image_size: int):
    """The MONAI dictionary pipeline applied to every manifest image (key ``image``)."""
    from monai.data import NibabelReader, PILReader, PydicomReader
    from monai.transforms import Compose, EnsureTyped, Lambdad, LoadImaged, Resized, ScaleIntensityd

    readers = [PILReader(reverse_indexing=False), NibabelReader(), PydicomReader(swap_ij=False)]
    return Compose([
        LoadImaged(keys="image", reader=readers, image_only=True, ensure_channel_first=True),
        Lambdad(keys="image", func=_to_2d),
        ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
        Resized(keys="image", spatial_size=(image_size, image_size), mode="area"),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
    ])


def load_images(files: Sequence[str], image_size: int, cache_dir: Optional[str] = None) -> list[Tensor]:
    """Decode ``files`` through :func:`image_pipeline`; every unreadable file is named in ONE error."""
    from monai.data import Dataset, PersistentDataset

    items = []
    for f in files:
        st = Path(f).stat()
        items.append({"image": f, "stamp": f"{st.st_size}-{st.st_mtime_ns}"})
    transform = image_pipeline(image_size)
    ds = PersistentDataset(items, transform, cache_dir=cache_dir) if cache_dir else Dataset(items, transform)
    images, failed = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(items)):
            try:
                images.append(torch.as_tensor(ds[i]["image"]).as_subclass(torch.Tensor))  # no MetaTensor
            except Exception as err:  # noqa: BLE001 - collect every unreadable file, then fail once
                reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
                failed.append(f"{files[i]} ({reason})")
    if failed:
        raise ImageDataError(f"{len(failed)} image file(s) could not be read: " + "; ".join(failed[:_LIST_MAX])
                             + (" ..." if len(failed) > _LIST_MAX else "") + ". Fix or remove them from the manifest")
    return images


def check_channels(images: Sequence[Tensor], files: Sequence[str], expected: Optional[int] = None) -> int:
    """The common channel count, or an error naming files per count (and the expected count if given)."""
    by_count: dict[int, list[str]] = defaultdict(list)
    for img, f in zip(images, files):
        by_count[int(img.shape[0])].append(f)
    if len(by_count) > 1 or (expected is not None and set(by_count) != {expected}):
        detail = "; ".join(f"{c} channel(s): {len(fs)} file(s), e.g. {fs[:3]}" for c, fs in sorted(by_count.items()))
        want = f"the model expects {expected} channel(s); " if expected is not None else ""
        raise ImageDataError(f"mixed or unexpected channel counts ({want}{detail}); convert the images to one "
                             "format (all grayscale or all RGB)")
    return next(iter(by_count))


def load_manifest(
    path: str | Path,
    *,
    columns: ManifestColumns = ManifestColumns(),
    classes: Sequence[str] = (),
    num_classes: Optional[int] = None,
    image_size: int = 28,
    channels: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> ManifestImages:
    """Read, validate and decode a manifest (see the module docstring for the checks).

    Args:
        path: ``.csv`` or ``.parquet`` manifest.
        columns: the column names.
        classes: declared class names (labels may then be names or ids); empty: integer ids.
        num_classes: declared class count when no names are given (``None`` infers it).
        image_size: square size every image is resized to.
        channels: required channel count (e.g. the registered model's), ``None`` = any common count.
        cache_dir: folder of MONAI's ``PersistentDataset`` cache (``None`` = no disk cache).
    """
    path = Path(path)
    df = read_manifest_table(path, columns)
    y, names = encode_labels(df[columns.label], classes, num_classes, f"manifest {path}, column {columns.label!r}")
    files = [str(p if p.is_absolute() else (path.parent / p)) for p in map(Path, df[columns.path])]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ImageDataError(f"manifest {path}: {len(missing)} image file(s) do not exist: {missing[:_LIST_MAX]}"
                             + (" ..." if len(missing) > _LIST_MAX else "") + "; fix the paths (relative paths are resolved from the manifest's folder)")
    images = load_images(files, image_size, cache_dir)
    check_channels(images, files, channels)
    patients = None
    if columns.patient in df.columns:
        # an empty patient cell is a patient of its own (never grouped with other empty cells)
        ids = [p if p not in ("", "nan", "None") else f"\0row{i}" for i, p in enumerate(df[columns.patient])]
        codes = {p: i for i, p in enumerate(dict.fromkeys(ids))}
        patients = torch.tensor([codes[p] for p in ids], dtype=torch.long)
    sites = df[columns.site].tolist() if columns.site in df.columns else None
    return ManifestImages(torch.stack(images), y, sites, patients, len(names), names, files)

