"""Images read on demand, batch by batch, instead of loaded whole into memory.

:func:`~spice_learn.image_input.as_images` decodes every image into one uint8
tensor, which is the fastest choice while the images fit in memory (a million
32-pixel images take 3 GB, a million 224-pixel ones 150 GB). An
:class:`ImageStream` holds only its source -- a directory, a list of files, or
any indexable dataset such as a ``torchvision`` dataset -- and decodes the
images a step asks for: the embedding pass, SimCLR pretraining and SPICE-Semi
"finetune" read their batches through a :class:`torch.utils.data.DataLoader`
(pinned memory on a GPU). With ``num_workers > 0`` worker processes decode the
next batches while the model runs; with the default 0 the calling process
decodes each batch when it is needed. Memory holds a few batches of images,
whatever the number of images.

Everything that accepts images accepts a stream (``fit``, ``predict``,
``transform``, ``score``), and a :class:`torch.utils.data.Dataset` passed
directly is streamed too (with ``num_workers=0``; wrap it in an ImageStream to
choose). A dataset must give the same image for an index every time: no random
transforms in it (the augmentations are the library's)::

    from spice_learn import ImageStream, SpiceClustering
    images = ImageStream("photos/", size=96, num_workers=4)
    labels = SpiceClustering(n_clusters=20, cache_dir="cache/").fit_predict(images)

The price of streaming is decoding: every pretraining epoch decodes every image
again, as a PyTorch training loop over files does.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from .image_decode import from_array, list_image_files, open_image, tensor_to_numpy

__all__ = ["ImageStream", "image_batches"]


class ImageStream:
    """Images decoded on demand from files or an indexable dataset.

    Behaves like the uint8 tensor ``(N, 3, H, W)`` that
    :func:`~spice_learn.image_input.as_images` would build (``len``, ``shape``,
    ``dtype``, indexing with an int, a slice or an array of indices), without
    holding the images: each access decodes them again.

    Parameters
    ----------
    source : str, os.PathLike, sequence of paths, or indexable dataset
        A directory (searched recursively for image files, sorted), a list or
        tuple of image file paths, or any object with ``__len__`` and
        ``__getitem__`` whose items are images: :class:`PIL.Image.Image`,
        arrays ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` and tensors
        ``(C, H, W)`` with the value ranges :func:`~spice_learn.image_input.as_images`
        accepts (a float image is scaled by its own range), or a tuple or list
        whose first element is one (``(image, target)`` as torchvision datasets
        return; the target is never used).
    size : int or (int, int), optional
        ``(height, width)`` every image is resized to (bilinear, antialiased);
        an int means a square. Default: the size of the first image.
    num_workers : int, default=0
        Worker processes of the DataLoader that decodes batches (0: decode in
        the calling process). Workers need a source that can be pickled, or the
        "fork" start method.

    Attributes
    ----------
    shape : torch.Size
        ``(N, 3, height, width)``.
    dtype : torch.dtype
        ``torch.uint8``.
    files : list of pathlib.Path or None
        The image files, for a directory or a list of paths.

    Raises
    ------
    TypeError
        For a source that is neither a path, a list of paths nor indexable.
    ValueError
        For an empty source, a bad ``size`` or ``num_workers``, or a first
        image that cannot be read (later images are read when a step needs
        them, and an unreadable one raises ValueError naming it then).
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, source, *, size=None, num_workers=0):
        if isinstance(source, (str, os.PathLike)):
            if not Path(source).is_dir():
                raise ValueError(f"source={str(source)!r} is not a directory; pass a directory, "
                                 "a list of image files or an indexable dataset.")
            paths = list_image_files(source, name="source")
        elif isinstance(source, (list, tuple)) and source and all(
                isinstance(p, (str, os.PathLike)) for p in source):
            paths = source
        elif hasattr(source, "__len__") and hasattr(source, "__getitem__") and not isinstance(
                source, (str, bytes)):
            paths = None
        else:
            raise TypeError("source must be a directory, a list of image file paths or an "
                            f"indexable dataset (with __len__ and __getitem__); got "
                            f"{type(source).__name__}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) \
                or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative int; got {num_workers!r}.")
        # Paths as one bytes array, not N Python objects: DataLoader workers that touch
        # Python objects copy their pages (a list of 10M paths would be GBs per worker).
        self._paths = (None if paths is None else
                       np.array([os.fsencode(os.path.abspath(p)) for p in paths]))
        self.source, self.num_workers = source, int(num_workers)
        n = len(source) if paths is None else len(self._paths)
        if n == 0:
            raise ValueError("source is empty: it holds 0 images.")
        self._size, self._content = None, None
        first = self._decode(0)
        self._size = _check_size(size) if size is not None else tuple(first.shape[-2:])
        self.shape = torch.Size((n, 3, *self._size))

    @property
    def files(self):
        """The image files (a list of :class:`pathlib.Path`), or None for a dataset."""
        if self._paths is None:
            return None
        return [Path(os.fsdecode(p)) for p in self._paths]

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        where = (f"{len(self._paths)} files" if self._paths is not None
                 else type(self.source).__name__)
        return f"ImageStream({where}, shape={tuple(self.shape)})"

    def __getitem__(self, index):
        """One image ``(3, H, W)`` for an int, a batch ``(B, 3, H, W)`` otherwise;
        decoded now, in this process."""
        if isinstance(index, torch.Tensor) and index.ndim == 0:
            index = index.item()
        if isinstance(index, (bool, np.bool_)):
            raise IndexError("an ImageStream is not indexed with a bool; use an int, a slice "
                             "or an array of indices.")
        if isinstance(index, (int, np.integer)):
            return self.image(int(index))
        rows = self._rows(index)
        if not rows:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.stack([self.image(i) for i in rows])

    def image(self, i):
        """Image ``i`` as a uint8 tensor ``(3, H, W)`` at the stream's size."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} is out of range for {n} images.")
        image = self._decode(i % n)
        if tuple(image.shape[-2:]) != self._size:
            image = TF.resize(image, list(self._size), antialias=True)
        return image

    def batches(self, index_batches, *, pin_memory=False):
        """Iterate over ``self[idx]`` for each ``idx`` in ``index_batches``, decoded by
        a DataLoader (``num_workers`` processes, two batches ahead per worker).

        Parameters
        ----------
        index_batches : iterable of slices or index sequences
        pin_memory : bool
            Return page-locked batches (faster copies to a GPU).

        Yields
        ------
        batch : torch.Tensor of dtype uint8 and shape (B, 3, H, W)
        """
        loader = DataLoader(_Decoded(self), batch_sampler=(self._rows(b) for b in index_batches),
                            num_workers=self.num_workers,
                            collate_fn=functools.partial(_stack, self.shape[1:]),
                            pin_memory=pin_memory,
                            generator=torch.Generator())  # leaves the global RNG alone
        batches = iter(loader)
        try:
            yield from batches
        finally:  # also when the caller stops early or raises: no workers left behind
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def update_digest(self, digest):
        """Feed ``digest`` (a :mod:`hashlib` object) with what identifies these images:
        the size and, for files, each path, byte size and modification time (not
        the bytes of the files); for a dataset, a hash of the decoded images,
        computed in one pass over the data the first time and kept. A dataset
        must therefore give the same image for an index every time (no random
        transforms in it): the embedding cache and the torchrun check rely on it.
        """
        digest.update(repr(tuple(self.shape)).encode())
        if self._paths is not None:
            for path in self._paths:
                try:
                    stat = os.stat(path)
                except OSError as error:
                    raise ValueError(f"Image file {os.fsdecode(path)!r} cannot be read: "
                                     f"{error.strerror}.") from None
                digest.update(path + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            return
        if self._content is None:
            content, step = hashlib.sha256(), 256
            for batch in self.batches(slice(s, s + step) for s in range(0, len(self), step)):
                content.update(batch.numpy())
            self._content = content.digest()
        digest.update(self._content)

    def _rows(self, index):
        if isinstance(index, slice):
            return list(range(len(self))[index])
        if torch.is_tensor(index):
            index = index.cpu().numpy()
        index = np.asarray(index)
        if index.dtype == np.bool_:
            if index.shape != (len(self),):
                raise IndexError(f"a boolean index must have shape ({len(self)},); "
                                 f"got {index.shape}.")
            index = np.flatnonzero(index)
        if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise IndexError("an ImageStream is indexed with an int, a slice, or a 1-D array "
                             f"of ints or bools; got an array of shape {index.shape} and dtype "
                             f"{index.dtype}.")
        return [int(i) for i in index]

    def _decode(self, i):
        if self._paths is not None:
            return _pil_to_tensor(open_image(Path(os.fsdecode(self._paths[i]))))
        item = self.source[i]
        if isinstance(item, (tuple, list)) and item:
            item = item[0]  # (image, target): the target is never used
        where = f"item {i} of the dataset"
        if isinstance(item, Image.Image):
            return _pil_to_tensor(item.convert("RGB"))
        if isinstance(item, (str, os.PathLike)):
            return _pil_to_tensor(open_image(Path(item)))
        if isinstance(item, torch.Tensor):
            array, channels_first = tensor_to_numpy(item), True
        elif isinstance(item, np.ndarray):
            array, channels_first = item, False
        else:
            raise TypeError(f"{where} is a {type(item).__name__}; an ImageStream needs PIL "
                            "images, arrays or tensors (or tuples whose first element is one).")
        if array.ndim not in (2, 3):
            raise ValueError(f"{where} has shape {array.shape}; an image must be (H, W), "
                             "(H, W, C) or (C, H, W).")
        try:
            return from_array(array[None], prefer_channels_first=channels_first)[0]
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None


class _Decoded(torch.utils.data.Dataset):
    """The map-style dataset a DataLoader reads: item ``i`` is ``stream.image(i)``."""

    def __init__(self, stream):
        self.stream = stream

    def __len__(self):
        return len(self.stream)

    def __getitem__(self, i):
        return self.stream.image(i)


def image_batches(images, index_batches, *, pin_memory=False):
    """``images[idx]`` for each ``idx`` in ``index_batches``: plain indexing for a
    tensor (a slice is a view, no copy), a prefetching DataLoader for an
    :class:`ImageStream`."""
    if isinstance(images, ImageStream):
        return images.batches(index_batches, pin_memory=pin_memory)
    return (images[idx] for idx in index_batches)


def _stack(shape, images):
    """The DataLoader's collate function: one uint8 batch (empty batches too)."""
    if not images:
        return torch.empty((0, *shape), dtype=torch.uint8)
    return torch.stack(images)


def _pil_to_tensor(image):
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _check_size(size):
    pair = (size, size) if isinstance(size, (int, np.integer)) else size
    try:
        ok = len(pair) == 2 and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                    and s > 0 for s in pair)
    except TypeError:
        ok = False
    if not ok or isinstance(size, bool):
        raise ValueError(f"size must be a positive int or a (height, width) pair of them; "
                         f"got {size!r}.")
    return (int(pair[0]), int(pair[1]))
