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
