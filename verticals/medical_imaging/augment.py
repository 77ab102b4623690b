"""Optional, seeded MONAI augmentation of few-shot support sets.

With ``copies = m > 0`` every support image is kept and ``m`` augmented copies are added (same label):
a small random affine (rotation up to 10 degrees, scale up to 10%, shift up to 2 pixels, border
padding), a random gamma in [0.8, 1.25] (half the time) and light Gaussian noise (half the time),
clipped to [0, 1]. The randomness comes from one integer seed drawn from the episode's generator, so a
draw is reproducible and every method evaluated on a draw adapts on the same augmented set. The same
function serves meta-training episodes, evaluation and onboarding (what is optimized is what is
deployed). Scored (query) images are never augmented, and the decision threshold is chosen on the
original support images.
"""
from __future__ import annotations

import torch
from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandGaussianNoise, ScaleIntensityRange
from torch import Tensor


def augmentation(seed: int) -> Compose:
    """The MONAI pipeline (channel-first 2D images), seeded."""
    return Compose([
        RandAffine(prob=1.0, rotate_range=0.1745, scale_range=(0.1, 0.1), translate_range=(2, 2),
                   padding_mode="border"),
        RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)),
        RandGaussianNoise(prob=0.5, std=0.02, sample_std=False),
        ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
    ]).set_random_state(seed=seed % (2**32))


def augment_support(x: Tensor, y: Tensor, copies: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(x [n, C, H, W], y [n])`` plus ``copies`` augmented copies of each image (inputs not mutated).

    Returns ``x' [n * (1 + copies), C, H, W]``, ``y'`` (originals first, then copy 1 of every image, ...).
    """
    if copies <= 0 or x.shape[0] == 0:
        return x, y
    pipe = augmentation(seed)
    # MONAI returns MetaTensors, whose per-op metadata tracking would slow every later step (plain tensors)
    extra = [pipe(img.clone()).as_subclass(torch.Tensor).float() for _ in range(copies) for img in x]
    return torch.cat([x, torch.stack(extra)]), torch.cat([y, y.repeat(copies)])


def draw_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
