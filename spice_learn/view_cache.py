"""The view cache: every image embedded once per view, the stage between the
representation and the heads.

:func:`build_view_cache` embeds the original images and their cached weak and
strong views with the frozen backbone (or, for precomputed features, draws
feature-space views), and keeps them in memory or in a file of ``cache_dir``: a
hit reads the file, a miss embeds and (under torchrun, on rank 0 only) writes it.
:func:`neighbour_graph` searches the nearest neighbours on the original view once,
for every later stage. :func:`original_embeddings` embeds new inputs for
``predict``/``transform`` without touching the fitted model.

The file of ``cache_dir``: ``views-<fingerprint>.npy``, a digest of the images,
the backbone weights (after pretraining), the view settings, ``embed_batch_size``
(augmentations are drawn per batch), the seed and the storage type. It appears
only once complete (an interrupted fit leaves none) and is never deleted. The
heads read their minibatches from it, so the memory of the cache does not grow
with ``N`` during head training; head selection, the neighbour search and the
prototypes still hold the original view, ``N x D`` values, in memory. The key
includes the seed, so only fits with an int ``random_state`` reuse a file
(``random_state=None`` warns). Under torchrun only rank 0 writes the file, which
must be in a folder every process sees; embedding gathers every view of every
image in each process's memory, and after a miss the other processes keep that
copy, so ``cache_dir`` bounds the memory of a single process only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed
from .cache_augment import feature_views, strong_transform, weak_transform
from .disk_cache import DiskArray, atomic_path, fingerprint
from .embedding import ViewCache, cache_nbytes, check_same_images, embed_images, embed_views
from .image_input import as_features, as_images
from .neighbors import nearest_neighbors
from .runtime import autocast_dtype

__all__ = ["AUTO_FLOAT16_BYTES", "SMALL_DATA_SIZE", "VIEW_CACHE_FORMAT", "ViewSettings",
           "BuiltCache", "default_n_views", "default_cache_dtype", "feature_cache",
           "as_inputs", "build_view_cache", "neighbour_graph", "original_embeddings",
           "checked_features"]

#: ``cache_dtype="auto"`` stores float16 once the float32 cache would exceed this.
AUTO_FLOAT16_BYTES = 1 << 30
#: ``n_weak_views``/``n_strong_views="auto"`` caches 4/16 views up to this many samples, else 2/4.
SMALL_DATA_SIZE = 5_000
#: Part of the ``cache_dir`` file names: change it when the same images, weights
#: and settings would give other embeddings (new augmentations, preprocessing).
VIEW_CACHE_FORMAT = 1


@dataclass(frozen=True)
class ViewSettings:
    """What the cache holds and where: ``n_weak`` and ``n_strong`` views per image,
    ``cache_dtype`` ("auto", "float32" or "float16"), ``embed_batch_size`` images per
    forward pass, ``cache_dir`` (None: in memory) and ``compile``."""

    n_weak: int
    n_strong: int
    cache_dtype: str = "float32"
    embed_batch_size: int = 256
    cache_dir: object = None
    compile: bool = False

    @property
    def n_views(self):
        """Cached views per image, the original one included."""
        return 1 + self.n_weak + self.n_strong


@dataclass(frozen=True)
class BuiltCache:
    """Result of :func:`build_view_cache`: the ``cache`` and whether the views were
    ``embedded`` (False: read from ``cache_dir``, or precomputed features)."""

    cache: ViewCache
    embedded: bool


def default_n_views(n_samples, strong_used=True):
    """``n_weak_views``/``n_strong_views="auto"``: 4 and 16 views up to
    :data:`SMALL_DATA_SIZE` samples, else 2 and 4; one strong view when nothing
    trains on them (``strong_used`` False: SCAN heads and SPICE-Semi "finetune" or
    none; only the "spice" heads and SPICE-Semi "head" learn from strong views).

    Small data sets are cheap to embed, and the SPICE-Semi head has more views to
    learn from; an earlier single-machine comparison on digits favoured 4/16 over
    2/4, but no script in ``benchmarks/`` reproduces it yet. Each view costs one
    backbone pass and ``D`` stored values per image, and a strong view its
    per-image RandAugment too (about 1,000 images a second on one core).
    """
    weak, strong = (4, 16) if n_samples <= SMALL_DATA_SIZE else (2, 4)
    return weak, strong if strong_used else 1


def default_cache_dtype(choice, n_samples, n_views, dim):
    """The storage type of ``cache_dtype``: "auto" is float16 once the float32 cache
    would exceed :data:`AUTO_FLOAT16_BYTES`."""
    if choice == "auto":
        big = cache_nbytes(n_samples, n_views, dim, torch.float32) > AUTO_FLOAT16_BYTES
        return torch.float16 if big else torch.float32
    return getattr(torch, choice)


def feature_cache(features, n_weak, n_strong, seed):
    """Cache of precomputed ``features`` ``(N, D)`` with feature-space weak and strong
    views (:func:`~spice_learn.cache_augment.feature_views`), all rows L2-normalised."""
    gen = torch.Generator().manual_seed(seed)
    weak = feature_views(features, n_weak, strong=False, generator=gen)
    strong = feature_views(features, n_strong, strong=True, generator=gen)
    return ViewCache(
        F.normalize(features, dim=1), F.normalize(weak, dim=2), F.normalize(strong, dim=2)
    )


def as_inputs(X, precomputed):
    """``X`` as what :func:`build_view_cache` takes: a float32 feature tensor when
    ``precomputed``, else uint8 images (:func:`~spice_learn.image_input.as_images`)."""
    return torch.from_numpy(as_features(X)) if precomputed else as_images(X)


def build_view_cache(extractor, inputs, settings, *, flip, seed, device, verbose=0,
                     shared=False, log=None):
    """Embed the original inputs and their augmented views once each.

    Parameters
    ----------
    extractor : FeatureExtractor or None
        The frozen backbone; None when ``inputs`` are precomputed features.
    inputs : torch.Tensor
        uint8 images ``(N, 3, H, W)`` (or an ImageStream), or float features ``(N, D)``.
    settings : ViewSettings
    flip : bool
        Whether the image augmentations flip horizontally.
    seed : int
        Seed of the augmentations.
    device : torch.device
    verbose : int
    shared : bool
        Whether the extractor belongs to a fitted model (``score``): it is then
        left untouched (see :func:`~spice_learn.embedding.embed_views`).
    log : callable or None
        Called with one line once image views are embedded or read.

    Returns
    -------
    BuiltCache
    """
    n_weak, n_strong = settings.n_weak, settings.n_strong
    if extractor is None:
        return BuiltCache(feature_cache(inputs, n_weak, n_strong, seed), False)
    built = _image_views(extractor, inputs, settings, flip, seed, device, verbose, shared)
    if log is not None:
        done = "embedded" if built.embedded else "read from cache_dir the embeddings of"
        log(f"{done} {inputs.shape[0]} images x {settings.n_views} views with {extractor.name}")
    return built


def _image_views(extractor, inputs, settings, flip, seed, device, verbose, shared):
    n_weak, n_strong = settings.n_weak, settings.n_strong
    size = extractor.input_size
    transforms = ([None] + [weak_transform(size, flip=flip)] * n_weak
                  + [strong_transform(size, flip=flip)] * n_strong)
    shape = (len(transforms), inputs.shape[0], extractor.feature_dim)
    dtype = default_cache_dtype(settings.cache_dtype, *shape)

    def embed(out=None):
        return embed_views(
            extractor, inputs, transforms, batch_size=settings.embed_batch_size, device=device,
            dtype=dtype, seed=seed, verbose=verbose, out=out, compile=settings.compile,
            shared=shared)

    if settings.cache_dir is None:
        return BuiltCache(_split_views(embed(), n_weak), True)
    key = fingerprint(inputs, extractor, VIEW_CACHE_FORMAT, n_weak, n_strong, flip, seed,
                      str(dtype), str(autocast_dtype(device)), settings.embed_batch_size)
    path = Path(settings.cache_dir) / f"views-{key}.npy"
    # Under torchrun rank 0 decides (processes that look for themselves could disagree
    # and wait for each other forever) and is the only one to write the file.
    main = distributed.is_main_process()
    check_same_images(inputs)  # a hit skips embed_views, which checks it otherwise
    hit = distributed.broadcast_object(_readable_cache(path, shape, dtype) if main else None)
    if hit:
        return BuiltCache(_split_views(DiskArray.open(path), n_weak), False)
    if not main:
        views = embed()  # the gathered embeddings of every image, kept in memory
    failure = None
    if main:
        try:
            with atomic_path(path) as tmp:
                embed(DiskArray.create(tmp, shape, dtype)).sync()
        except BaseException as error:  # the other processes must not wait for the file
            failure = error
    failed = distributed.broadcast_object(None if failure is None else repr(failure))
    if failure is not None:
        raise failure
    if failed is not None:
        raise RuntimeError(f"rank 0 could not write the view cache to {path}: {failed}")
    if main:
        views = DiskArray.open(path)
    return BuiltCache(_split_views(views, n_weak), True)


def _split_views(views, n_weak):
    return ViewCache(views[0], views[1 : 1 + n_weak], views[1 + n_weak :])


def _readable_cache(path, shape, dtype):
    """Whether ``path`` holds a view cache of ``shape`` and ``dtype``; a file that does
    not is recomputed and replaced (with a warning)."""
    if not path.is_file():
        return False
    try:
        stored = DiskArray.open(path)
        problem = None
        if (stored.shape, stored.dtype) != (tuple(shape), dtype):
            problem = f"holds {stored.dtype} values of shape {stored.shape}"
        elif path.stat().st_size < stored.nbytes_on_disk:
            problem = "is truncated"
    except (OSError, ValueError) as error:
        problem = f"cannot be read ({error})"
    if problem is None:
        return True
    warnings.warn(f"{path} {problem}, expected {dtype} values of shape {tuple(shape)}; "
                  "embedding again and replacing it.", UserWarning, stacklevel=6)
    return False


def neighbour_graph(cache, n_neighbors, device):
    """The ``n_neighbors`` nearest neighbours (cosine) of every sample on the cached
    original view, sorted by similarity, so that any smaller count is a slice of the
    columns; None when ``n_neighbors`` is 0."""
    if not n_neighbors:
        return None
    return nearest_neighbors(cache.original[:], n_neighbors, device=device)


def original_embeddings(extractor, X, *, n_features_in=None, batch_size=256, device,
                        compile=False, verbose=0):
    """L2-normalised embeddings ``(N, D)`` of new inputs ``X``, for a fitted model.

    The extractor is left as it is (a copy runs when it must move to ``device``), and
    no process-wide setting changes: several threads may call this with one model.

    Parameters
    ----------
    extractor : FeatureExtractor or None
        None: ``X`` are precomputed features with ``n_features_in`` columns.
    X : images or features
    n_features_in : int or None
    batch_size : int
    device : torch.device
    compile : bool
    verbose : int
    """
    if extractor is None:
        return F.normalize(checked_features(X, n_features_in), dim=1)
    return embed_images(extractor, as_images(X), batch_size=batch_size, device=device,
                        verbose=verbose if distributed.is_main_process() else 0,
                        compile=compile, shared=True)


def checked_features(X, n_features_in):
    """Precomputed features ``X`` as a float32 tensor, with ``n_features_in`` columns
    (ValueError otherwise)."""
    features = as_features(X)
    if features.shape[1] != n_features_in:
        raise ValueError(
            f"X has {features.shape[1]} features, but SpiceClustering is expecting "
            f"{n_features_in} features as input.")
    return torch.from_numpy(features)
