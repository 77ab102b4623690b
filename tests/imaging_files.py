"""Small GENERATED image files for the imaging tests (PNG, NIfTI, DICOM, MedMNIST .npz, manifests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_npz(path: Path, *, rgb: bool = False, classes: int = 3, n: int = 12, size: int = 8, seed: int = 0, **extra) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).reshape(n, 1).astype(np.uint8)
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def gray_image(label: int, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size)).astype(np.uint8)
    img[2:6, 3:12] = 200 if label else 90  # asymmetric pattern: orientation errors would show
    return img


def write_png(path: Path, img: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(img).save(path)
    return path.name


def write_nifti(path: Path, img: np.ndarray) -> str:
    import nibabel as nib

    nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), str(path))
    return path.name


def write_dicom(path: Path, img: np.ndarray) -> str:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "test"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = img.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path.name


def write_manifest(tmp_path: Path, *, sites=("a", "b"), per_class: int = 4, patients: bool = True,
                   formats=("png", "nii"), labels=("normal", "pneumonia")) -> Path:
    """A manifest of PNG and NIfTI files: each site has ``per_class`` images per class, 2 per patient."""
    writers = {"png": (write_png, ".png"), "nii": (write_nifti, ".nii.gz"), "dcm": (write_dicom, ".dcm")}
    rows, k = [], 0
    for site in sites:
        for c, name in enumerate(labels):
            for i in range(per_class):
                writer, suffix = writers[formats[k % len(formats)]]
                fname = writer(tmp_path / f"img{k:03d}{suffix}", gray_image(c, seed=k))
                rows.append({"path": fname, "label": name, "site": site, "patient_id": f"{site}-p{c}-{i // 2}"})
                k += 1
    df = pd.DataFrame(rows)
    if not patients:
        df = df.drop(columns="patient_id")
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    return path
