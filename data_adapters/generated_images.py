"""A GENERATED stand-in image dataset, used only when no real image data is found.

It lets the imaging vertical run on a fresh clone with no data folder. The images are NOT medical
data: 28x28 grayscale pictures of a bright "body" with two dark "lung" ellipses; class 1 adds one to
three soft bright blobs inside the lungs (a cartoon of consolidation) whose contrast varies from
obvious to faint, and class 0 has small bright specks that mimic vessels, so the task is learnable
but not trivial. Numbers measured on it say nothing about real diagnostic performance.
"""
from __future__ import annotations

import numpy as np
import torch

from data_adapters.medmnist import ImageArrays

GENERATED_SOURCE = "GENERATED synthetic chest-like images (not real data)"


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))


def generate_images(per_class: int = 800, size: int = 28, seed: int = 0) -> ImageArrays:
    """``2 * per_class`` generated images ``[n, 1, size, size]`` in ``[0, 1]``, labels 0/1, seeded."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    images, labels = [], []
    for label in (0, 1):
        for _ in range(per_class):
            img = 0.75 * _blob(yy, xx, 0.5, 0.5, 0.75, 0.55) + 0.1
            lungs = np.zeros_like(img)
            for side in (-1, 1):
                cx = 0.5 + side * rng.uniform(0.17, 0.23)
                lungs += _blob(yy, xx, rng.uniform(0.42, 0.52), cx, rng.uniform(0.22, 0.3), rng.uniform(0.1, 0.14)) ** 2
            img = img - 0.55 * np.clip(lungs, 0, 1)
            for _ in range(rng.integers(1, 4)):  # vessels: small specks, both classes
                img += rng.uniform(0.05, 0.15) * _blob(yy, xx, rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.75), 0.03, 0.03)
            if label == 1:
                for _ in range(rng.integers(1, 4)):
                    side = rng.choice([-1, 1])
                    img += rng.uniform(0.08, 0.35) * _blob(yy, xx, rng.uniform(0.35, 0.65), 0.5 + side * rng.uniform(0.12, 0.28),
                                                           rng.uniform(0.06, 0.14), rng.uniform(0.05, 0.1))
            img += rng.normal(0, 0.03, img.shape)
            images.append(np.clip(img, 0, 1))
            labels.append(label)
    order = rng.permutation(len(labels))
    x = torch.as_tensor(np.stack(images)[order][:, None], dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels)[order], dtype=torch.long)
    return ImageArrays(x, y, 2, GENERATED_SOURCE, class_names=["class-0 (generated)", "class-1 (generated)"])
