"""Decoding of single images and image arrays: the low-level steps that
:mod:`spice_learn.image_input` (whole inputs in memory) and
:mod:`spice_learn.image_stream` (images read on demand) share.

Every function returns new memory; nothing the caller passed is modified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "list_image_files", "open_image", "tensor_to_numpy", "from_array"]

#: File extensions treated as images when a directory is given.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def list_image_files(directory, *, name="X"):
    """Sorted list of image files under ``directory`` (recursive).

    Parameters
    ----------
    directory : str or os.PathLike
        Folder to search.
    name : str
        The parameter the folder came from, named in error messages.

    Returns
    -------
    files : list of pathlib.Path
        Files whose extension (case-insensitive) is in :data:`IMAGE_EXTENSIONS`.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{name}={str(directory)!r} is not a directory.")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ValueError(
            f"{name}={str(directory)!r} contains no image files "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return files


def tensor_to_numpy(tensor):
    """A numpy copy of ``tensor`` on the CPU (bfloat16 becomes float32: numpy has none).

    Parameters
    ----------
    tensor : torch.Tensor

    Returns
    -------
    array : ndarray
    """
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def open_image(path):
    """Read the image file ``path`` as an RGB :class:`PIL.Image.Image`.

    Parameters
    ----------
    path : pathlib.Path

    Returns
    -------
    image : PIL.Image.Image
        Fully loaded (the file is closed), converted to RGB.

    Raises
    ------
    ValueError
        When the file is missing or cannot be decoded; the message names it.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"Image file not found: {str(path)!r}.") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ValueError(f"Cannot read image file {str(path)!r}: {exc}") from None


def from_array(arr, *, prefer_channels_first):
    """Images in a numeric array as a new uint8 tensor ``(N, 3, H, W)``.

    Parameters
    ----------
    arr : ndarray of shape (N, H, W), (N, H, W, C) or (N, C, H, W)
        ``C`` in 1, 3, 4 (gray is repeated, alpha dropped); uint8 or other
        integers in [0, 255], floats in [0, 1] or [0, 255].
    prefer_channels_first : bool
        Which axis holds the channels when both axis 1 and axis 3 could.

    Returns
    -------
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W)
        Shares no memory with ``arr``.

    Raises
    ------
    TypeError
        For non-numeric, complex or bool arrays.
    ValueError
        For a wrong number of dimensions or channels, an empty array, NaN or
        infinity, or values out of range.
    """
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise TypeError(f"X must hold numbers; got an array of dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.complexfloating) or arr.dtype == np.bool_:
        raise TypeError(f"X must hold real numbers; got dtype {arr.dtype}.")
    if arr.ndim not in (3, 4):
        hint = " For 2-D feature matrices use backbone='precomputed'." if arr.ndim == 2 else ""
        raise ValueError(
            "Image arrays must be 3-D (N, H, W) or 4-D (N, H, W, C) / (N, C, H, W); "
            f"got an array with ndim={arr.ndim} and shape {arr.shape}.{hint}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"X is empty: got an array of shape {arr.shape}.")
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    else:
        arr = _to_channels_first(arr, prefer_channels_first)
    if arr.shape[2] == 0 or arr.shape[3] == 0:
        raise ValueError(f"Images must have a positive height and width; got shape {arr.shape}.")
    arr = _to_uint8(arr)
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    elif arr.shape[1] == 4:
        arr = arr[:, :3]
    # A fresh, contiguous array: never share memory with the caller's input.
    return torch.from_numpy(np.array(arr, dtype=np.uint8, order="C", copy=True))


def _to_channels_first(arr, prefer_channels_first):
    channels = (1, 3, 4)
    first, last = arr.shape[1] in channels, arr.shape[3] in channels
    if first and (prefer_channels_first or not last):
        return arr
    if last:
        return arr.transpose(0, 3, 1, 2)
    raise ValueError(
        "Cannot find the channel axis of X: a 4-D image array needs 1, 3 or 4 channels "
        f"in axis 1 (N, C, H, W) or axis 3 (N, H, W, C); got shape {arr.shape}."
    )


def _to_uint8(arr):
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("X contains NaN or infinity.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 255.0:
            raise ValueError(
                "Float images must have values in [0, 1] or [0, 255]; got values in "
                f"[{lo:.4g}, {hi:.4g}]. Pass unnormalised images (the backbone's own "
                "normalisation is applied internally)."
            )
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.rint(arr.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise ValueError(
            f"Integer images must have values in [0, 255]; got values in [{lo}, {hi}]."
        )
    return arr.astype(np.uint8)
