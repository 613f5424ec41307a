"""The cached weak and strong views of SPICE-Self, as in SPICE (paper section 4.2).

* weak: horizontal flip and a random shift of up to 12.5 % of the side
  (FixMatch's flip-and-shift, a reflect-padded random crop);
* strong: the weak view, then four random RandAugment operations and one
  Cutout hole of half the side (SCAN's strong augmentation).

Image transforms come from :mod:`torchvision.transforms.v2` and act on one uint8
``(3, H, W)`` tensor at a time, so every image gets its own random parameters.
For precomputed features (no images), :func:`feature_views` makes the
feature-space counterparts: small Gaussian noise (weak), and noise plus
dropping a random 20 % of the dimensions (strong).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

__all__ = ["weak_transform", "strong_transform", "feature_views"]


def weak_transform(size, *, flip=True):
    """Flip-and-shift transform for ``(3, H, W)`` uint8 images of ``size=(H, W)``."""
    pad = [max(1, round(0.125 * size[1])), max(1, round(0.125 * size[0]))]  # left/right, top/bottom
    steps = [v2.RandomHorizontalFlip()] if flip else []
    steps.append(v2.RandomCrop(size, padding=pad, padding_mode="reflect"))
    return v2.Compose(steps)


def strong_transform(size, *, flip=True):
    """Weak transform, then RandAugment (4 ops) and a Cutout of half the side."""
    return v2.Compose(
        [
            weak_transform(size, flip=flip),
            v2.RandAugment(num_ops=4),
            # Cutout: one square hole of half the side (a quarter of the area).
            v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=127),
        ]
    )


def feature_views(features, n_views, *, strong, generator):
    """Feature-space augmentations for precomputed features.

    Parameters
    ----------
    features : torch.Tensor of shape (N, D)
    n_views : int
        Number of views to draw.
    strong : bool
        Weak views add Gaussian noise of 5 % of each dimension's standard
        deviation; strong views add 10 % and zero a random 20 % of the
        dimensions (rescaling the rest, as dropout does).
    generator : torch.Generator

    Returns
    -------
    views : torch.Tensor of shape (n_views, N, D)
    """
    scale = features.std(dim=0, keepdim=True).clamp_min(1e-12)
    views = []
    for _ in range(n_views):
        noise = torch.randn(features.shape, generator=generator, dtype=features.dtype)
        view = features + noise * scale * (0.10 if strong else 0.05)
        if strong:
            keep = torch.rand(features.shape, generator=generator) >= 0.2
            view = view * keep / 0.8
        views.append(view)
    return torch.stack(views)
