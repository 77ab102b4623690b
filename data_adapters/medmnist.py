"""Reader of MedMNIST-format ``.npz`` files (Yang et al. 2023, "MedMNIST v2", Scientific Data).

A MedMNIST file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images``, ``test_labels``. Images are 2D, grayscale ``[n, H, W]`` or RGB ``[n, H, W, 3]``, any
integer or float dtype; labels are ``[n]`` or ``[n, 1]`` class ids (any class count). Multi-label
files (ChestMNIST's ``[n, 14]``) are refused: a site here is single-label classification.

The reader returns channel-first float images scaled to ``[0, 1]`` (uint8 divided by 255; other
dtypes min-max scaled over the whole file, so relative intensities between images are kept).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "val", "test")


class ImageDataError(ValueError):
    """An image file, array or manifest cannot be used; the message names it and what to fix."""


@dataclass
class ImageArrays:
    """Labelled images in memory.

    Args:
        x: images ``[n, C, H, W]`` float32 in ``[0, 1]``.
        y: class ids ``[n]`` int64.
        num_classes: declared (or inferred) class count; every label is below it.
        source: where the images came from (file path or a description).
        split: the MedMNIST split of every row (``train`` / ``val`` / ``test``), if known.
        class_names: optional readable names, one per class.
    """

    x: Tensor
    y: Tensor
    num_classes: int
    source: str
    split: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])


def _images_to_tensor(images: np.ndarray, key: str, path: Path) -> Tensor:
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = np.transpose(images, (0, 3, 1, 2))
    else:
        raise ImageDataError(
            f"{path}: {key} has shape {images.shape}; expected 2D images [n, H, W] (grayscale) or "
            "[n, H, W, 1|3] (RGB). 3D MedMNIST volumes are not supported by this adapter"
        )
    if not np.issubdtype(images.dtype, np.number):
        raise ImageDataError(f"{path}: {key} has dtype {images.dtype}; expected numbers")
    x = torch.as_tensor(np.ascontiguousarray(images)).float()
    bad = torch.nonzero(~torch.isfinite(x).flatten(1).all(1)).flatten().tolist()
    if bad:
        raise ImageDataError(f"{path}: {key} has NaN or inf pixels in {len(bad)} image(s), first indices {bad[:5]} "
                             f"(0-based); replace those pixels or drop the images (with their {key[:-7]}_labels)")
    return x


def _labels_to_tensor(labels: np.ndarray, key: str, path: Path, n: int) -> Tensor:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ImageDataError(
            f"{path}: {key} has shape {labels.shape}; expected one class id per image ([n] or [n, 1]). "
            "Multi-label files (e.g. ChestMNIST) are not supported"
        )
    if labels.shape[0] != n:
        raise ImageDataError(f"{path}: {key} has {labels.shape[0]} labels for {n} images")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(np.mod(labels, 1) == 0):
        raise ImageDataError(f"{path}: {key} holds non-integer labels; class ids must be whole numbers")
    return torch.as_tensor(labels.astype(np.int64))


def _scale(x: Tensor, dtype: np.dtype) -> Tensor:
    if dtype == np.uint8:
        return x / 255.0
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def load_medmnist(
    path: str | Path,
    *,
    splits: Sequence[str] = SPLITS,
    num_classes: Optional[int] = None,
    class_names: Sequence[str] = (),
) -> ImageArrays:
    """Read the given ``splits`` of a MedMNIST-format ``.npz`` into one :class:`ImageArrays`.

    Args:
        path: the ``.npz`` file.
        splits: which of ``train``/``val``/``test`` to read (concatenated in that order); a split
            absent from the file is an error.
        num_classes: declared class count; labels outside ``0..num_classes-1`` are an error.
            ``None`` infers ``max(label) + 1``.
        class_names: optional names, one per class.

    Raises:
        ImageDataError: missing or unreadable file, missing keys, bad shapes, mixed channel counts
            between splits, negative labels or labels outside the declared classes.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageDataError(f"MedMNIST file {path} does not exist; pass --data PATH to an existing .npz")
    try:
        data = np.load(path, allow_pickle=False)
        files = set(data.files)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ImageDataError(f"{path}: not a readable .npz file ({err})") from None
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ImageDataError(f"unknown MedMNIST split(s) {unknown}; choose from {list(SPLITS)}")
    xs, ys, split_tags, dtype = [], [], [], None
    for split in splits:
        missing = [k for k in (f"{split}_images", f"{split}_labels") if k not in files]
        if missing:
            raise ImageDataError(f"{path}: missing array(s) {missing}; a MedMNIST file has {[f'{s}_images' for s in SPLITS]} "
                                 f"and the matching *_labels (found {sorted(files)})")
        images = data[f"{split}_images"]
        x = _images_to_tensor(images, f"{split}_images", path)
        y = _labels_to_tensor(data[f"{split}_labels"], f"{split}_labels", path, x.shape[0])
        if xs and (x.shape[1:] != xs[0].shape[1:]):
            raise ImageDataError(
                f"{path}: {split}_images are {tuple(x.shape[1:])} (channels, H, W) but {splits[0]}_images are "
                f"{tuple(xs[0].shape[1:])}; mixed channel counts or sizes cannot form one model input"
            )
        dtype = images.dtype if dtype is None else dtype
        xs.append(x)
        ys.append(y)
        split_tags += [split] * x.shape[0]
    x, y = torch.cat(xs), torch.cat(ys)
    if x.shape[0] == 0:
        raise ImageDataError(f"{path}: the splits {list(splits)} hold no images")
    check_labels(y, num_classes, str(path))
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if class_names and len(class_names) != k:
        raise ImageDataError(f"{path}: {len(class_names)} class names given for {k} classes")
    return ImageArrays(_scale(x, dtype), y, k, str(path), split_tags, list(class_names))


def check_labels(y: Tensor, num_classes: Optional[int], where: str) -> None:
    """Raise :class:`ImageDataError` naming the offending labels when ``y`` leaves ``0..num_classes-1``."""
    bad = y < 0 if num_classes is None else (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        values = sorted(set(y[bad].tolist()))[:10]
        allowed = "non-negative class ids" if num_classes is None else f"0..{num_classes - 1}"
        raise ImageDataError(
            f"{where}: {int(bad.sum())} label(s) outside the declared classes ({allowed}): {values}; "
            "fix the labels or declare num_classes"
        )
