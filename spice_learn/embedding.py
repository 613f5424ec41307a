"""Embed images once per cached view with a frozen backbone.

SPICE-Self trains only light heads on a frozen backbone, so each image needs
to pass through the backbone once per cached view, never once per epoch.
:func:`embed_views` does that pass and returns a :class:`ViewCache`.

Memory of the cache: ``n_views * N * D`` values, i.e. ``4 * D`` bytes per image
and view in float32 and ``2 * D`` in float16 (a ResNet-18, D = 512: 2 KiB /
1 KiB per image and view; 60,000 images with 7 views: 860 MB / 430 MB).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import multiprocessing
import sys
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from . import distributed
from .disk_cache import hash_images
from .image_stream import image_batches
from .runtime import (  # noqa: F401  (isolated_rng: still importable from here)
    autocast_dtype,
    compiled,
    derived_seed,
    halve_after_oom,
    isolated_rng,
    torch_threads,
)

__all__ = ["MIN_PARALLEL_VIEWS", "MAX_AUGMENT_WORKERS", "ViewCache", "embed_views",
           "embed_images", "cache_nbytes", "check_same_images", "augment_workers"]

#: Fewest augmented image views (images x augmented views) that worker processes
#: augment (:func:`augment_workers`); below it their start costs more than they save.
MIN_PARALLEL_VIEWS = 4096
#: Most worker processes that augment the views of :func:`embed_views`.
MAX_AUGMENT_WORKERS = 8


@dataclass
class ViewCache:
    """L2-normalised embeddings of the original images and their views.

    Each field is a tensor in memory or a :class:`~spice_learn.disk_cache.DiskArray`
    (``cache_dir``), indexed the same way: ``original[idx]``,
    ``weak[view_idx, idx]``, ``strong[view_idx, idx]`` read rows, and
    ``original[:]`` gives all of them as a tensor.

    Attributes
    ----------
    original : torch.Tensor or DiskArray of shape (N, D)
    weak : torch.Tensor or DiskArray of shape (n_weak, N, D)
    strong : torch.Tensor or DiskArray of shape (n_strong, N, D)
    """

    original: torch.Tensor
    weak: torch.Tensor
    strong: torch.Tensor

    @property
    def n_samples(self):
        return self.original.shape[0]

    def to(self, device):
        return ViewCache(self.original.to(device), self.weak.to(device), self.strong.to(device))


def cache_nbytes(n_samples, n_views, dim, dtype):
    """Bytes the cache takes for ``n_views`` views of ``n_samples`` images."""
    return n_samples * n_views * dim * torch.empty((), dtype=dtype).element_size()


def embed_views(
    extractor, images, transforms, *, batch_size, device, dtype=torch.float32, seed=0,
    verbose=0, desc="embedding", out=None, compile=False, shared=False,
):
    """Pass every image through the backbone once per view.

    Parameters
    ----------
    extractor : FeatureExtractor
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W), or ImageStream
        An :class:`~spice_learn.image_stream.ImageStream` is read block by block
        through its DataLoader.
    transforms : list of callables or None
        One entry per view; None is the original image. Each callable takes
        and returns one ``(3, h, w)`` uint8 image at the extractor's input size.
    batch_size : int
        Images per forward pass.
    device : torch.device
        Where the forward passes run; channels_last memory format and
        :func:`~spice_learn.runtime.autocast_dtype` mixed precision are used there.
    dtype : torch.dtype
        Storage type of the result (float32 or float16).
    seed : int
        Seed of the augmentations (the global RNG state is restored). The
        images are augmented in blocks of ``batch_size``, block ``j`` with the
        global RNG seeded from ``(seed, j)`` (block 0 with ``seed`` itself), so
        that a block's views do not depend on the blocks before it. Worker
        processes augment the blocks when that pays (:func:`augment_workers`:
        in a fit, of in-memory images, with at least 2 torch threads); the views
        are the same as those made in this process.
    verbose : int
        Show a tqdm bar when > 0.
    out : torch.Tensor or DiskArray of shape (len(transforms), N, D), optional
        Where the embeddings go (``out[v, start:stop] = rows``): one batch of
        one view at a time in one process, one whole view at a time, after the
        gather, under torchrun; default: a new CPU tensor.
    compile : bool
        Run the module through :func:`torch.compile` (see
        :func:`~spice_learn.runtime.compiled`).
    shared : bool
        False (a fit, which owns ``extractor``): the module is moved to ``device``,
        put in eval mode and channels_last in place, and small per-batch ops run
        on one thread. True (a fitted model, which other threads may use at the
        same time): the module is used as it is when it is ready for ``device``,
        else a prepared copy runs; the thread count is never changed, and the
        global RNG is neither seeded nor restored when no view is augmented.

    Under torchrun each process embeds a contiguous share of whole blocks
    (:func:`~spice_learn.distributed.shard_range`) and the shares are gathered:
    every process returns the embeddings of all images, in the order and with
    the augmentations of a one-process run. Every process must therefore call
    this with the same ``images``: a digest of them (shape and a hash) is
    compared first, and ValueError is raised in every process when they differ.
    A call made by only some of the processes waits for the others forever.

    Returns
    -------
    features : torch.Tensor or DiskArray of shape (len(transforms), N, D)
        L2-normalised embeddings (``out`` when given).
    """
    module = _ready_module(extractor.module, device) if shared else (
        extractor.module.to(device).eval().to(memory_format=torch.channels_last))
    one_thread = contextlib.nullcontext if shared else (lambda: torch_threads(1))
    shards = distributed.is_distributed()
    if shards:
        check_same_images(images)
    lo, hi = distributed.shard_range(images.shape[0], block=batch_size)
    local = out if out is not None and not shards else torch.empty(
        (len(transforms), hi - lo, extractor.feature_dim), dtype=dtype)
    bar = tqdm(total=(hi - lo) * len(transforms), desc=desc, unit="img",
               disable=verbose <= 0 or not distributed.is_main_process())
    forward = _Forward(extractor, compiled(module, compile), device, one_thread)
    augmented = any(t is not None for t in transforms)
    seeded = augmented or not shared  # the augmentations draw from the global CPU RNG
    rng = torch.random.fork_rng(devices=[]) if seeded else contextlib.nullcontext()
    starts = range(lo, hi, batch_size)
    workers = 0 if shared else augment_workers(images, transforms, hi - lo, len(starts))
    blocks = _BlockViews(images, starts, hi, batch_size, transforms, seed, extractor.input_size,
                         seeded)
    pin = device.type == "cuda"
    views = blocks.parallel(workers, pin_memory=pin) if workers else \
        blocks.serial(one_thread, pin_memory=pin)
    # the workers take the cores: the forward passes get what is left, at least one thread
    threads = torch_threads(max(1, torch.get_num_threads() - workers)) if workers else \
        contextlib.nullcontext()
    try:
        with rng, threads, torch.inference_mode():
            for start, block_views in zip(starts, views):
                for v, view in enumerate(block_views):
                    local[v, start - lo : start - lo + len(view)] = forward(view, dtype)
                    bar.update(len(view))
    finally:
        views.close()  # worker processes (augmentation, ImageStream decoding) stop here
        bar.close()
    if not shards:
        return local
    gathered = torch.stack([distributed.all_gather_rows(view) for view in local])
    if out is None:
        return gathered
    for v, view in enumerate(gathered):  # every process holds (and writes) all rows
        out[v, 0 : len(view)] = view
    return out


def check_same_images(images):
    """Under torchrun, raise ValueError in every process when the processes hold
    different images (compared by shape and a hash; nothing to do in one process)."""
    if not distributed.is_distributed():
        return
    content = hashlib.blake2b(digest_size=16)
    hash_images(content, images)
    digest = (tuple(images.shape), str(images.dtype), content.hexdigest())
    digests = distributed.all_gather_object(digest)
    if any(d != digests[0] for d in digests):
        shapes = ", ".join(f"rank {r}: {d[0]}" for r, d in enumerate(digests))
        raise ValueError("under torchrun every process must pass the same images to "
                         f"fit/predict/transform; the processes got different ones ({shapes}).")


def _block_seed(seed, block):
    """Seed of block ``block`` of :func:`embed_views`; block 0 keeps ``seed``, so
    at most ``batch_size`` images get the augmentations of earlier versions (their
    embeddings differ by float rounding, about 5e-7, since the input conversion
    became one ``addcmul``)."""
    return seed if block == 0 else derived_seed(seed, block)


class _Forward:
    """L2-normalised features of a batch of uint8 images, on the CPU; halves its
    batch on a CUDA out-of-memory error and goes on (with a warning)."""

    def __init__(self, extractor, module, device, one_thread):
        self.module, self.device, self.amp = module, device, autocast_dtype(device)
        self.one_thread = one_thread
        self.scale, self.shift = _input_affine(extractor, device)
        self.batch_size = None

    def __call__(self, images, dtype):
        self.batch_size = self.batch_size or len(images)
        parts, start = [], 0
        while start < len(images):
            batch = images[start : start + self.batch_size]
            try:
                parts.append(self._embed(batch, dtype))
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                parts.append(None)
            if parts[-1] is None:  # outside the handler, so the failed pass's tensors are freed
                parts.pop()
                self.batch_size = halve_after_oom(self.batch_size, self.device, "embedding")
                continue  # the same images again, in smaller batches
            start += len(batch)
        return torch.cat(parts)

    def _embed(self, batch, dtype):
        with self.one_thread():  # uint8 -> normalised channels_last input in one op
            x = torch.empty(batch.shape, device=self.device, memory_format=torch.channels_last)
            torch.addcmul(self.shift, batch.to(self.device, non_blocking=True), self.scale,
                          out=x)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            feats = self.module(x)
        with self.one_thread():
            return _unit_rows(feats).to("cpu", dtype)


def _input_affine(extractor, device):
    """``scale, shift`` with ``uint8 * scale + shift = (uint8 / 255 - mean) / std``: the
    conversion, normalisation and channels_last layout of a batch in one op."""
    mean = torch.tensor(extractor.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(extractor.std, device=device).view(1, 3, 1, 1)
    return 1 / (255 * std), -mean / std


def _unit_rows(feats):
    """Rows of ``feats`` flattened and L2-normalised, in float32 (as ``F.normalize``,
    in three ops instead of five)."""
    feats = feats.flatten(1)
    norms = torch.linalg.vector_norm(feats, dim=1, keepdim=True, dtype=torch.float32)
    return torch.div(feats, norms.clamp_min_(1e-12))


class _BlockViews(Dataset):
    """The views of the blocks of :func:`embed_views`: item ``j`` is the list of views
    (one per transform, uint8, resized to ``size`` first) of the images
    ``starts[j]:min(starts[j] + batch_size, stop)``, augmented with the global RNG
    seeded by :func:`_block_seed` from the block's index when ``seeded``.

    A block's views depend on nothing else, so :meth:`serial` (in this process) and
    :meth:`parallel` (in worker processes) give the same views.
    """

    def __init__(self, images, starts, stop, batch_size, transforms, seed, size, seeded):
        self.images, self.starts, self.stop = images, starts, stop
        self.batch_size, self.transforms, self.seed = batch_size, list(transforms), seed
        self.size, self.seeded = list(size), seeded

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, j):
        """In a worker process (one torch thread): the views of block ``j``."""
        start = self.starts[j]
        block = self.images[self._rows(start)]
        # clone: a slice shares the storage of all images, which would be sent whole
        return [view.clone() if view is block else view
                for view in self.augment(block, start, contextlib.nullcontext)]

    def _rows(self, start):
        """The images of the block that begins at ``start``."""
        return slice(start, min(start + self.batch_size, self.stop))

    def augment(self, block, start, one_thread):
        """The views of ``block``, the images from ``start`` on."""
        if self.seeded:
            torch.default_generator.manual_seed(_block_seed(self.seed, start // self.batch_size))
        if list(block.shape[-2:]) != self.size:
            block = TF.resize(block, self.size, antialias=True)
        return [block if t is None else _per_image(t, block, one_thread)
                for t in self.transforms]

    def serial(self, one_thread, *, pin_memory):
        """Yield the views block by block, augmented in this process (each call to
        ``next`` seeds the global RNG: the caller forks it)."""
        blocks = image_batches(self.images, map(self._rows, self.starts), pin_memory=pin_memory)
        try:
            for start, block in zip(self.starts, blocks):
                yield self.augment(block, start, one_thread)
        finally:
            blocks.close()  # an ImageStream's DataLoader workers stop here, even on errors

    def parallel(self, workers, *, pin_memory):
        """Yield the views block by block, augmented by ``workers`` processes (a
        DataLoader, two blocks ahead per worker; the caller's RNG is not drawn from)."""
        loader = DataLoader(self, batch_size=None, num_workers=workers,
                            pin_memory=pin_memory, generator=torch.Generator(),
                            multiprocessing_context="fork")  # Linux only: augment_workers
        batches = iter(loader)
        try:
            yield from batches
        finally:  # also when the caller stops early or raises: no workers left behind
            batches._shutdown_workers()


def augment_workers(images, transforms, n_images, n_blocks):
    """Worker processes that augment the views of :func:`embed_views`: one per torch
    thread (``n_jobs``), at most :data:`MAX_AUGMENT_WORKERS` and one per block, and
    none (augment in this process) when that is fewer than 2, when the images are an
    ImageStream (its own workers decode), for fewer than
    :data:`MIN_PARALLEL_VIEWS` augmented image views, in a daemon process (a
    ``multiprocessing.Pool`` worker may not start processes), and off Linux: the
    workers are forked, and the spawn start of macOS and Windows would import the
    caller's script again in each worker (a script without an
    ``if __name__ == "__main__":`` guard would fail).

    The torchvision transforms work on one image at a time, in Python, on one core.
    The forward passes then run with the threads the workers leave, at least one.
    On 2 AVX2 cores, the 21 views of the 1,797 digits at 16 px (20 of them
    augmented; ``spice_convnet4``) took 48-59 s in one process and 29-32 s with two
    workers and one forward thread (the same views; 34-37 s with two forward threads).
    """
    n_augmented = n_images * sum(t is not None for t in transforms)
    if not isinstance(images, torch.Tensor) or n_augmented < MIN_PARALLEL_VIEWS:
        return 0
    if not sys.platform.startswith("linux") or multiprocessing.current_process().daemon:
        return 0  # no fork start (see above), or a Pool worker, which may not start processes
    workers = min(torch.get_num_threads(), MAX_AUGMENT_WORKERS, n_blocks)
    return workers if workers >= 2 else 0


def _per_image(transform, batch, one_thread):
    """Apply ``transform`` to each image (tiny kernels: one thread, see
    :func:`~spice_learn.runtime.torch_threads`, unless the caller shares the process)."""
    with one_thread():
        return torch.stack([transform(image) for image in batch])


def embed_images(extractor, images, *, batch_size, device, verbose=0, compile=False,
                 shared=False):
    """Embeddings ``(N, D)`` float32 of the original images (no augmentation); ``shared``
    as in :func:`embed_views`."""
    return embed_views(
        extractor, images, [None], batch_size=batch_size, device=device, verbose=verbose,
        compile=compile, shared=shared,
    )[0]


def _ready_module(module, device):
    """``module`` itself when it already is in eval mode, on ``device`` and channels_last
    (a fitted model's backbone on the CPU), else a copy made so; ``module`` is not changed."""
    tensors = list(module.parameters()) + list(module.buffers())
    ready = (not any(m.training for m in module.modules())
             and all(t.device == device for t in tensors)
             and all(t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last)
                     for t in tensors))
    if ready:
        return module
    return copy.deepcopy(module).to(device).eval().to(memory_format=torch.channels_last)

