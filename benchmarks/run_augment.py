"""Batched per-sample augmentation on the CPU: spice_learn's BatchAugment against
kornia.augmentation with the same operations.

Stage 1's strongest colour recipe, that of images invariant to hue and inversion
(random resized crop, flip, colour jitter with any hue, grayscale, inversion), on
batches of 256 images, at 16 and 32 px. Each timing is the fastest of 5 calls after a
warm-up. The result goes to the ``augment`` section of
docs/benchmarks.md.

Usage::

    python benchmarks/run_augment.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402


def best_of(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    import kornia
    import kornia.augmentation as K

    from spice_learn.ssl_augment import contrastive_augment

    rows = []
    for size in (16, 32):
        x = torch.rand(256, 3, size, size)
        ours = contrastive_augment((size, size), flip=True, colour=True,
                                   invariances=("hue", "polarity"))
        gen = torch.Generator().manual_seed(0)
        theirs = torch.nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(0.2, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.8, 0.5, p=0.8),
            K.RandomGrayscale(p=0.5),
            K.RandomInvert(p=0.5),
        )
        t_ours = best_of(lambda: ours(x, gen))
        t_kornia = best_of(lambda: theirs(x))
        rows.append((size, t_ours, t_kornia))
        print(f"{size} px: BatchAugment {t_ours * 1e3:.1f} ms, kornia {t_kornia * 1e3:.1f} ms "
              f"per batch of 256", flush=True)
    lines = [
        "## Batched augmentation on the CPU: BatchAugment vs kornia",
        "",
        f"Written by `python benchmarks/run_augment.py`; {machine()}; kornia "
        f"{kornia.__version__}; load average {os.getloadavg()[0]:.2f} at the end. Stage 1's "
        "colour recipe for hue- and polarity-invariant images (random resized crop 0.2-1, "
        "flip, colour jitter 0.4/0.4/0.8/0.5 with p 0.8, grayscale p 0.5, inversion p 0.5) "
        "on a batch of 256 float images; fastest of 5 calls after a warm-up.",
        "",
        "| size | BatchAugment (ms) | kornia.augmentation (ms) | kornia / ours |",
        "|---|---|---|---|",
    ]
    for size, a, b in rows:
        lines.append(f"| {size} px | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.1f}x |")
    print(f"wrote {write_section('augment', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
