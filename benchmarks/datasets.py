"""Load the real data sets of ``../shared/data`` (checked by sha256) for benchmarks.

The files are never copied into the repository. Set ``SPICE_LEARN_DATA`` (or pass
``data_dir``) when they live elsewhere than ``<repo>/../shared/data``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

SHA256 = {
    "mnist.npz": "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",
    "usps.npz": "95e790f272f9ff97b293f6960cbae5a4632b24788dc64725d33a6fed681fab9f",
    "fashion_mnist_subset.npz": "26264ee479ca62e3c8e1a00851fc3aa6ddebd576a0fdff68c1bee3fef50b8c43",
    "cifar10_test.npz": "8ff863179677fb2f7cfdbdd7d2d594d6d382597a67a83bd676a3dd8219609ae9",
    "cifar10_train.npz": "92892b329e122a522d600cad90221c2dc8b68dc3dd581982f0215d7712c56b9e",
    "weights/resnet20-12fca82f.th": "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    "weights/resnet56-4bfd9763.th": "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
}


def data_dir(path=None):
    """The shared data folder: ``path``, ``$SPICE_LEARN_DATA`` or ``<repo>/../shared/data``."""
    path = path or os.environ.get("SPICE_LEARN_DATA")
    if path is None:
        path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(path)


def checked_path(name, path=None):
    """Path of a shared file after checking its sha256; raises if missing or altered."""
    file = data_dir(path) / name
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found; set SPICE_LEARN_DATA to the shared data folder")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if digest != SHA256[name]:
        raise ValueError(f"{file}: sha256 {digest} differs from the expected {SHA256[name]}")
    return file


def cifar10_test(path=None):
    """CIFAR-10 test images (10000, 32, 32, 3) uint8 (decoded from JPEG) and labels."""
    d = np.load(checked_path("cifar10_test.npz", path))
    return d["x_test"], d["y_test"].astype(np.int64)


def _scaled_uint8(x):
    x = np.asarray(x, dtype=np.float64)
    return np.rint(x / x.max() * 255).astype(np.uint8)


def mnist(path=None):
    """All 70,000 MNIST images (28x28 uint8) and labels."""
    d = np.load(checked_path("mnist.npz", path))
    return np.concatenate([d["x_train"], d["x_test"]]), np.concatenate([d["y_train"], d["y_test"]]).astype(np.int64)


def usps(path=None):
    """All 9,298 USPS images (16x16, scaled to uint8) and labels."""
    d = np.load(checked_path("usps.npz", path))
    x = np.concatenate([d["x_train"], d["x_test"]])
    return _scaled_uint8(x), np.concatenate([d["y_train"], d["y_test"]]).astype(np.int64)


def fashion_mnist_subset(path=None):
    """The 12,669 Fashion-MNIST images of the shared subset (28x28 uint8) and labels."""
    d = np.load(checked_path("fashion_mnist_subset.npz", path))
    return np.concatenate([d["x_train"], d["x_test"]]), np.concatenate([d["y_train"], d["y_test"]]).astype(np.int64)


def cifar10_all(path=None):
    """All 60,000 CIFAR-10 images (train JPEGs decoded, then test), 32x32x3 uint8."""
    import io

    from PIL import Image

    d = np.load(checked_path("cifar10_train.npz", path))
    b, o = d["jpeg_bytes"], d["jpeg_offsets"]
    train = np.stack([np.asarray(Image.open(io.BytesIO(b[o[i]:o[i + 1]].tobytes())).convert("RGB"))
                      for i in range(len(o) - 1)])
    x_test, y_test = cifar10_test(path)
    return np.concatenate([train, x_test]), np.concatenate([d["y_train"].astype(np.int64), y_test])


def digits(path=None):
    """scikit-learn's 1,797 bundled digits (8x8, values 0-16 scaled to uint8) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * (255 / 16)).astype(np.uint8), d.target.astype(np.int64)


#: The ten outlines of :func:`shapes`, as polygons in [-1, 1]^2 (None: an ellipse drawn by PIL).
_SHAPES = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 0.8), (-1, 0.8)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
              (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "star": None, "disc": None, "ring": None,
    "bar": [(-1, -0.25), (1, -0.25), (1, 0.25), (-1, 0.25)],
    "ell": [(-1, -1), (-0.4, -1), (-0.4, 0.4), (1, 0.4), (1, 1), (-1, 1)],
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)],
    "crescent": None,
}


def shapes(n=2000, size=32, seed=0):
    """Synthetic colour images: ten outlines (the classes) drawn in a random colour on a
    random background colour, at a random position, scale and rotation.

    The nuisance factors (colour, position, scale, rotation) vary more than the class;
    KMeans on the pixels is near chance, a supervised small CNN separates them.
    Returns ``(n, size, size, 3)`` uint8 images and the labels.
    """
    import math

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    names = list(_SHAPES)
    y = rng.integers(0, len(names), size=n)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    big = size * 4  # drawn large, then downsampled (anti-aliasing)
    for i, label in enumerate(y):
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        while np.abs(fg.astype(int) - bg).sum() < 150:  # keep the outline visible
            fg = rng.integers(0, 256, 3)
        img = Image.new("RGB", (big, big), tuple(int(c) for c in bg))
        draw = ImageDraw.Draw(img)
        scale = rng.uniform(0.22, 0.4) * big
        cx, cy = rng.uniform(scale, big - scale, 2)
        angle = rng.uniform(0, 2 * math.pi)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        colour = tuple(int(c) for c in fg)
        name = names[label]
        box = [cx - scale, cy - scale, cx + scale, cy + scale]
        if name == "disc":
            draw.ellipse(box, fill=colour)
        elif name == "ring":
            draw.ellipse(box, outline=colour, width=max(1, int(scale * 0.3)))
        elif name == "crescent":
            draw.ellipse(box, fill=colour)
            off = scale * 0.5 * np.array([math.cos(angle), math.sin(angle)])
            draw.ellipse([box[0] + off[0], box[1] + off[1], box[2] + off[0], box[3] + off[1]],
                         fill=tuple(int(c) for c in bg))
        else:
            pts = (np.array([(math.cos(t), math.sin(t)) if j % 2 == 0 else
                             (0.45 * math.cos(t), 0.45 * math.sin(t))
                             for j, t in enumerate(np.linspace(0, 2 * math.pi, 11)[:-1])])
                   if name == "star" else np.array(_SHAPES[name], dtype=float))
            pts = pts @ rot.T * scale + (cx, cy)
            draw.polygon([tuple(p) for p in pts], fill=colour)
        out[i] = np.asarray(img.resize((size, size), Image.BILINEAR))
    return out, y.astype(np.int64)
