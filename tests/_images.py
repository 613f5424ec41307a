"""Image makers shared by the tests (and by the torchrun job script, which runs
outside pytest and therefore cannot use fixtures)."""

import numpy as np
import torch


def random_pixels(n, size, channels=None, seed=0):
    """Uniform uint8 noise: ``(n, size, size)`` gray, or ``(n, size, size, channels)``."""
    shape = (n, size, size) if channels is None else (n, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def pattern_images(n=64, size=12, seed=0):
    """Four kinds of bars and squares with noise, uint8 ``(n, 3, size, size)``; image
    ``i`` is of kind ``i % 4``."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, 3, size, size))
    for i in range(n):
        kind, o = i % 4, rng.integers(0, 3)
        if kind == 0:
            x[i, :, 2 + o : 4 + o, 1:-1] += 200
        elif kind == 1:
            x[i, :, 1:-1, 2 + o : 4 + o] += 200
        elif kind == 2:
            x[i, :, 3:9, 3:9] += 200
        else:
            x[i, :, np.arange(size), np.arange(size)] += 200
    return torch.from_numpy(x.clip(0, 255).astype(np.uint8))
