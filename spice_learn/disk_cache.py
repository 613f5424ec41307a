"""Files under ``checkpoint_dir`` and ``cache_dir``: fingerprints, atomic writes,
and arrays on disk that are read row by row.

:class:`DiskArray` is an embedding cache of shape ``(V, N, D)`` (or one view of
it, ``(N, D)``) in a ``.npy`` file, so ``numpy.load(path, mmap_mode="r")`` opens
it too. It reads the rows a minibatch asks for with positional reads, not
through a memory map: every page of a mapped file that a process touches counts
in its resident set, and the kernel maps up to 64 KiB around each touched row
(measured: 1,000 random rows of a 32 MB mapped file made all 32 MB resident).
With positional reads the memory of the cache is the rows read, whatever ``N``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .image_stream import ImageStream

__all__ = ["DiskArray", "atomic_path", "fingerprint", "hash_images", "tensor_bytes"]


def fingerprint(images, extractor, *settings):
    """A digest of the images, the weights of the extractor and the settings of a run.

    Parameters
    ----------
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W), or ImageStream
    extractor : FeatureExtractor
    *settings
        Values with a stable ``repr`` (numbers, strings, tuples).

    Returns
    -------
    digest : str
        64 hexadecimal digits (SHA-256).
    """
    digest = hashlib.sha256()
    digest.update(repr((extractor.name, extractor.input_size, settings)).encode())
    hash_images(digest, images)
    for value in extractor.module.state_dict().values():
        digest.update(tensor_bytes(value.detach().cpu()))
    return digest.hexdigest()


def hash_images(digest, images):
    """Feed ``digest`` (a :mod:`hashlib` object) with the identity of ``images``: the
    shape and bytes of a uint8 tensor, or :meth:`ImageStream.update_digest` (paths,
    sizes and modification times of files; the decoded images of a dataset)."""
    if isinstance(images, ImageStream):
        images.update_digest(digest)
    else:
        digest.update(repr(tuple(images.shape)).encode())
        digest.update(tensor_bytes(images))


def tensor_bytes(tensor):
    """The bytes of a CPU tensor as a flat ``memoryview``, for hashing without a copy
    (a copy is made only when ``tensor`` is not contiguous)."""
    return memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy())


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``, renamed to ``path`` when the block
    completes and removed when it raises: ``path`` is never a partial file.

    The folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide a shared cache
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskArray:
    """A float array of shape ``(V, N, D)`` or ``(N, D)`` in a ``.npy`` file.

    Indexing the views of a 3-D array reads nothing: ``a[i]`` is view ``i`` (a
    2-D :class:`DiskArray`) and ``a[start:stop]`` views ``start:stop`` (3-D).
    Indexing rows reads them (returns a new tensor on :attr:`device`):

    * ``a[start:stop]`` on a 2-D array reads consecutive rows (``a[:]``: all);
    * ``a[idx]`` (2-D) and ``a[view_idx, idx]`` (3-D) with integer tensors or
      arrays read the rows they name, shaped like the (broadcast) indices
      followed by ``D``; ``a[i, key]`` is ``a[i][key]``.

    Integers and integer arrays count negative positions from the end and raise
    IndexError out of range; boolean masks, floats and other keys raise
    TypeError. An empty slice or index array reads an empty tensor.

    ``a[i, start:stop] = rows`` (3-D) writes consecutive rows of view ``i``.
    No file handle is kept open between calls, so the object pickles as a
    path and a shape.
    """

    def __init__(self, path, shape, dtype, offset, *, first_row=0, device="cpu"):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self._offset = offset  # bytes before the data (the .npy header)
        self._first_row = first_row  # row of element [0, 0] in the flat (rows, D) data

    # ----------------------------------------------------------- creation
    @classmethod
    def create(cls, path, shape, dtype):
        """A new file of ``shape`` and torch ``dtype`` (contents unset)."""
        np_dtype = _numpy_dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(np_dtype), "fortran_order": False,
                  "shape": tuple(int(s) for s in shape)}
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            offset = f.tell()
            f.truncate(offset + int(np.prod(shape)) * np_dtype.itemsize)
        return cls(path, shape, dtype, offset)

    @classmethod
    def open(cls, path):
        """The array stored in the ``.npy`` file ``path``."""
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, np_dtype = read_header(f)
            offset = f.tell()
        if fortran_order or len(shape) not in (2, 3):
            raise ValueError(f"{path} does not hold a C-ordered 2-D or 3-D array.")
        return cls(path, shape, torch.from_numpy(np.empty(0, np_dtype)).dtype, offset)

    def sync(self):
        """Flush the written data to the disk (before the file is renamed into place)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ access
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def nbytes_on_disk(self):
        """Size of the whole file: header and data."""
        return self._offset + int(np.prod(self.shape)) * _numpy_dtype(self.dtype).itemsize

    def to(self, device):
        """The same array, whose reads return tensors on ``device``."""
        return DiskArray(self.path, self.shape, self.dtype, self._offset,
                         first_row=self._first_row, device=device)

    def views(self, start, stop):
        """Views ``start:stop`` of a 3-D array, as a 3-D array (nothing is read)."""
        n = self.shape[1]
        return DiskArray(self.path, (stop - start, *self.shape[1:]), self.dtype, self._offset,
                         first_row=self._first_row + start * n, device=self.device)

    def __getitem__(self, key):
        if self.ndim == 3 and _is_int(key):
            view = range(self.shape[0])[key]  # negative and out-of-range ints as in Python
            return self.views(view, view + 1)._squeezed()
        if self.ndim == 3 and isinstance(key, slice):
            views = range(self.shape[0])[key]
            if views.step != 1 and len(views) > 1:
                raise IndexError("a slice of views needs a step of 1")
            return self.views(views.start, views.start + len(views))
        if self.ndim == 3 and isinstance(key, tuple) and len(key) == 2 and _is_int(key[0]):
            return self[key[0]][key[1]]
        if self.ndim == 2 and isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            rows = np.arange(start, stop, step, dtype=np.int64)
        elif self.ndim == 2:
            rows = _as_index(key, self.shape[0])
        elif isinstance(key, tuple) and len(key) == 2:
            view, sample = np.broadcast_arrays(_as_index(key[0], self.shape[0]),
                                               _as_index(key[1], self.shape[1]))
            rows = view * self.shape[1] + sample
        else:
            raise TypeError(f"unsupported index for a {self.ndim}-D DiskArray: {key!r}")
        out = torch.from_numpy(self._read(rows.reshape(-1) + self._first_row))
        return out.view(*rows.shape, self.shape[-1]).to(self.device)

    def __setitem__(self, key, value):
        view, samples = key
        start, stop, _ = samples.indices(self.shape[1])
        data = value.detach().to("cpu", self.dtype).contiguous().numpy()
        if data.shape != (stop - start, self.shape[2]):
            raise ValueError(f"expected rows of shape {(stop - start, self.shape[2])}; "
                             f"got {data.shape}.")
        row = self._first_row + int(view) * self.shape[1] + start
        fd = os.open(self.path, os.O_WRONLY)
        try:
            _write_all(fd, memoryview(data).cast("B"), self._offset + row * self._row_bytes)
        finally:
            os.close(fd)

    def _squeezed(self):
        return DiskArray(self.path, self.shape[1:], self.dtype, self._offset,
                         first_row=self._first_row, device=self.device)

    @property
    def _row_bytes(self):
        return self.shape[-1] * _numpy_dtype(self.dtype).itemsize

    def _read(self, rows):
        """Rows ``rows`` of the flat data, one read per run of consecutive rows."""
        if len(rows) == 0:
            return np.empty((0, self.shape[-1]), _numpy_dtype(self.dtype))
        unique, inverse = np.unique(rows, return_inverse=True)
        data = np.empty((len(unique), self.shape[-1]), _numpy_dtype(self.dtype))
        buffer = memoryview(data).cast("B")
        size = self._row_bytes
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for lo, hi in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(unique)].tolist()):
                _read_all(fd, buffer[lo * size : hi * size],
                          self._offset + int(unique[lo]) * size)
        finally:
            os.close(fd)
        return data[inverse.reshape(-1)]


def _numpy_dtype(dtype):
    return torch.empty(0, dtype=dtype).numpy().dtype


def _is_int(key):
    return isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))


def _as_index(index, size):
    """Integer positions along an axis of ``size`` (negative ones counted from the
    end); IndexError when out of range, TypeError for anything but integers."""
    if torch.is_tensor(index):
        index = index.cpu().numpy()
    if isinstance(index, (slice, type(Ellipsis))) or index is None:
        raise TypeError(f"a DiskArray is indexed by integers or integer arrays here; "
                        f"got {index!r}")
    index = np.asarray(index)
    if index.dtype.kind not in "iu":  # bool masks, floats, objects
        raise TypeError(f"a DiskArray is indexed by integers or integer arrays; got an "
                        f"array of {index.dtype}")
    index = index.astype(np.int64, copy=False)
    if index.size and (index.min() < -size or index.max() >= size):
        raise IndexError(f"index out of range for an axis of size {size}")
    return np.where(index < 0, index + size, index)


def _read_all(fd, buffer, offset):
    while len(buffer):
        n = os.preadv(fd, [buffer], offset) if hasattr(os, "preadv") else _seek_read(
            fd, buffer, offset)
        if n <= 0:
            raise OSError(f"unexpected end of the cache file at byte {offset}")
        buffer, offset = buffer[n:], offset + n


def _seek_read(fd, buffer, offset):
    os.lseek(fd, offset, os.SEEK_SET)
    data = os.read(fd, len(buffer))
    buffer[: len(data)] = data
    return len(data)


def _write_all(fd, buffer, offset):
    while len(buffer):
        if hasattr(os, "pwrite"):
            n = os.pwrite(fd, buffer, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            n = os.write(fd, buffer)
        buffer, offset = buffer[n:], offset + n
