"""Turn whatever the user passes as images into one canonical form.

Every image input becomes a ``torch.uint8`` tensor of shape ``(N, 3, H, W)``;
precomputed features become a ``float32`` array of shape ``(N, D)``. Nothing the
user passed is modified: every path below produces new arrays.

Accepted image inputs
---------------------
* numpy arrays or torch tensors shaped ``(N, H, W)`` (grayscale),
  ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``C`` in 1, 3, 4 (alpha is dropped);
  uint8 in [0, 255], other integer types in [0, 255], floats in [0, 1] or [0, 255];
* a list or tuple of :class:`PIL.Image.Image`;
* a list or tuple of file paths (``str`` or :class:`os.PathLike`);
* a directory (``str`` or :class:`os.PathLike`), searched recursively for files
  with an image extension (see :data:`IMAGE_EXTENSIONS`);
* an :class:`~spice_learn.image_stream.ImageStream` or a
  :class:`torch.utils.data.Dataset`: not loaded, but read batch by batch where
  they are used (for images that do not fit in memory).

Grayscale images are repeated to 3 channels. Images of different sizes are
resized (bilinear) to the most common size among them.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.utils import check_array

from .image_decode import (
    IMAGE_EXTENSIONS,
    from_array,
    list_image_files,
    open_image,
    tensor_to_numpy,
)
from .image_stream import ImageStream

__all__ = ["IMAGE_EXTENSIONS", "as_images", "as_features", "list_image_files", "read_image_files"]


def as_images(X):
    """Coerce any supported image input to a uint8 tensor ``(N, 3, H, W)``.

    Parameters
    ----------
    X : array-like, torch.Tensor, list of PIL images, list of paths or a directory
        See the module docstring for the accepted forms.

    Returns
    -------
    images : torch.Tensor of dtype uint8 and shape (N, 3, H, W), or ImageStream
        A new tensor that shares no memory with ``X``; an
        :class:`~spice_learn.image_stream.ImageStream` is returned as it is, and
        a :class:`torch.utils.data.Dataset` becomes one (streamed, not loaded).

    Raises
    ------
    TypeError
        For an unsupported container or element type.
    ValueError
        For empty input, a wrong number of dimensions or channels, NaN/inf or
        out-of-range values, or an unreadable file (the message names the file).
    """
    if isinstance(X, ImageStream):
        return X  # read-only: decoded batch by batch where it is used
    if isinstance(X, torch.utils.data.Dataset):
        return ImageStream(X)
    if isinstance(X, (str, os.PathLike)):
        path = Path(X)
        if path.is_dir():
            return _from_pil_list([open_image(p) for p in list_image_files(path)])
        raise ValueError(
            f"X={str(X)!r} is not a directory; pass a directory of images or a list "
            "of image file paths."
        )
    if isinstance(X, (list, tuple)):
        return _from_sequence(X)
    if isinstance(X, torch.Tensor):
        return from_array(tensor_to_numpy(X), prefer_channels_first=True)
    if isinstance(X, np.ndarray):
        return from_array(X, prefer_channels_first=False)
    raise TypeError(
        "X must be a numpy array, a torch tensor, a list of PIL images, a list of "
        f"image file paths or a directory; got {type(X).__name__}."
    )


def as_features(X):
    """Validate precomputed features: a finite 2-D float32 array ``(N, D)``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)

    Returns
    -------
    features : ndarray of shape (n_samples, n_features), dtype float32
    """
    if isinstance(X, torch.Tensor):
        X = tensor_to_numpy(X)
    kind = getattr(np.asarray(X) if isinstance(X, (list, tuple)) else X, "dtype", None)
    if kind is not None and np.dtype(kind).kind in "USO" and np.dtype(kind) != object:
        raise TypeError(f"X must hold numbers; got an array of dtype {np.dtype(kind)}.")
    return check_array(X, dtype=np.float32, ensure_min_samples=1, copy=True, input_name="X")


def _from_sequence(items):
    if len(items) == 0:
        raise ValueError("X is empty: got a list with 0 images.")
    if all(isinstance(item, Image.Image) for item in items):
        return _from_pil_list([item for item in items])
    if all(isinstance(item, (str, os.PathLike)) for item in items):
        return _from_pil_list([open_image(Path(item)) for item in items])
    kinds = sorted({type(item).__name__ for item in items})
    raise TypeError(
        "A list X must hold only PIL images or only file paths; got elements of "
        f"type {', '.join(kinds)}."
    )


def read_image_files(paths):
    """Open every file in ``paths``, skipping the ones that cannot be read.

    Parameters
    ----------
    paths : sequence of path-like

    Returns
    -------
    images : list of PIL.Image.Image
        The readable images, as RGB.
    readable : list of str
        Their paths, in the same order.
    failures : list of (str, str)
        ``(path, reason)`` of every file that could not be read.
    """
    images, readable, failures = [], [], []
    for path in paths:
        try:
            images.append(open_image(Path(path)))
            readable.append(str(path))
        except ValueError as exc:
            failures.append((str(path), str(exc)))
    return images, readable, failures


def _from_pil_list(images):
    sizes = Counter(img.size for img in images)  # (width, height)
    # Most common size; ties go to the larger image.
    target = max(sizes.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1]))[0]
    arrays = []
    for img in images:
        img = img.convert("RGB")
        if img.size != target:
            img = img.resize(target, Image.BILINEAR)
        arrays.append(np.asarray(img, dtype=np.uint8))
    stacked = np.stack(arrays)  # (N, H, W, 3)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
