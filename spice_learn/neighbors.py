"""Cosine nearest neighbours, exact, the reliability score of SPICE-Semi, and the
agreement of a clustering with the neighbour graph.

SPICE-Semi (paper section 3.3, Eq. 5) calls a sample reliable when most of its
``n_s`` nearest neighbours in the embedding space share its cluster; the mean of
those scores over the data set (:func:`neighbour_agreement`) compares clusterings
without labels.
:func:`nearest_neighbors` finds them exactly with one of two backends:

- ``"torch"`` multiplies one block of rows at a time against all samples and
  keeps the top ``n_s`` of each row, so memory is ``O(block * N + N * n_s)``,
  never ``N x N`` (70,000 samples would need 19.6 GB for the full float32
  similarity matrix). It runs on whatever device the features are moved to (a
  GPU when given one).
- ``"faiss"`` runs an exact inner-product search (``faiss.knn``; on a GPU
  ``faiss.IndexFlatIP``) on the L2-normalised float32 features, in blocks of
  query rows, on the CPU, or on a GPU when faiss was built
  with GPU support and the device is CUDA. faiss is optional: install it with
  ``pip install faiss-cpu`` or the ``spice-learn[faiss]`` extra.

The default, ``"auto"``, takes faiss when it is installed and can run where the
features are asked to be (the CPU, or a GPU with a GPU build of faiss), torch
otherwise. Both return the same neighbours up to the order of near-ties.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AGREEMENT_NEIGHBORS", "nearest_neighbors", "reliability_scores",
           "neighbour_agreement"]

#: Neighbours per sample of :func:`neighbour_agreement` when it compares clusterings
#: (SPICE-Self's entropy weights, SPICE-Semi's rounds).
AGREEMENT_NEIGHBORS = 10

#: Bytes of one block of the similarity matrix (rows x N float32 values).
DEFAULT_BLOCK_BYTES = 64 << 20

#: Largest ``k`` a faiss GPU index can select (``GPU_MAX_SELECTION_K``); above it
#: the faiss backend searches on the CPU.
_FAISS_GPU_MAX_K = 2048

_BACKENDS = ("auto", "torch", "faiss")

#: Query rows per faiss search call (its results: rows x (n_s + 1) ids and scores).
FAISS_QUERY_ROWS = 16384


def _import_faiss():
    """The faiss module, or None when it is not installed (or unusable)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss_has_gpu(faiss):
    """Whether this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def nearest_neighbors(features, n_neighbors, *, device=None, block_bytes=DEFAULT_BLOCK_BYTES,
                      backend="auto"):
    """Indices of each sample's ``n_neighbors`` nearest neighbours by cosine similarity.

    The search is exact with either backend; they agree up to the order of
    neighbours whose similarities tie in float32.

    Parameters
    ----------
    features : array-like or torch.Tensor of shape (N, D)
        Embeddings (need not be normalised; any float dtype).
    n_neighbors : int
        Neighbours per sample, ``1 <= n_neighbors < N``. A sample is never its
        own neighbour (even when it has exact duplicates, which are neighbours).
    device : torch.device or str, optional
        Where the search runs; default: the device of ``features``. The faiss
        backend runs on a CUDA device only with a GPU build of faiss (and
        ``n_neighbors < 2048``), on the CPU otherwise.
    block_bytes : int
        Torch backend: size budget of one block of the similarity matrix; the
        number of rows per block is ``block_bytes // (4 * N)`` (at least 1).
        Ignored by the faiss backend, which blocks its search itself.
    backend : {"auto", "torch", "faiss"}, default="auto"
        ``"torch"``: blocked matrix products and ``topk`` on ``device``.
        ``"faiss"``: exact inner-product search (``faiss.knn``, or
        ``faiss.IndexFlatIP`` on a GPU) on the L2-normalised float32
        features; needs faiss (``pip install faiss-cpu`` or
        ``pip install "spice-learn[faiss]"``). ``"auto"``: faiss when it is
        installed and ``device`` is the CPU (or faiss has GPU support), torch
        otherwise.

    Returns
    -------
    indices : torch.Tensor of shape (N, n_neighbors), int64, on the CPU
        Neighbours sorted by decreasing similarity.

    Raises
    ------
    ValueError
        If ``features`` is not 2-D, ``n_neighbors`` is out of range or
        ``backend`` is not one of the above.
    ImportError
        If ``backend="faiss"`` and faiss is not installed.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}; got {backend!r}.")
    features = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D); got shape {tuple(features.shape)}.")
    n = features.shape[0]
    if not 1 <= n_neighbors < n:
        raise ValueError(f"n_neighbors must be in [1, N - 1] = [1, {n - 1}]; got {n_neighbors}.")
    device = torch.device(device) if device is not None else features.device
    if backend == "torch":
        return _torch_neighbors(features, n_neighbors, device, block_bytes)
    faiss = _import_faiss()
    if backend == "faiss":
        if faiss is None:
            raise ImportError(
                "backend='faiss' needs the faiss package, which is not installed: "
                "pip install faiss-cpu (or the extra: pip install \"spice-learn[faiss]\"), "
                "or use backend='torch'.")
        return _faiss_neighbors(faiss, features, n_neighbors, device)
    if faiss is not None and (device.type == "cpu" or _faiss_has_gpu(faiss)):
        return _faiss_neighbors(faiss, features, n_neighbors, device)
    return _torch_neighbors(features, n_neighbors, device, block_bytes)


def _torch_neighbors(features, n_neighbors, device, block_bytes):
    """Blocked cosine similarities and ``topk`` on ``device`` (the diagonal masked)."""
    n = features.shape[0]
    x = F.normalize(features.to(device).float(), dim=1)
    rows = max(1, int(block_bytes) // (4 * n))
    out = torch.empty((n, n_neighbors), dtype=torch.long)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        sim = x[start:stop] @ x.T  # (rows, N)
        sim[torch.arange(stop - start), torch.arange(start, stop)] = float("-inf")
        out[start:stop] = sim.topk(n_neighbors, dim=1).indices.cpu()
    return out


def _faiss_neighbors(faiss, features, n_neighbors, device):
    """Exact inner-product search of ``n_neighbors + 1`` on the normalised features,
    ``FAISS_QUERY_ROWS`` query rows at a time.

    Each query row's own index is dropped from its results; when exact
    duplicates push it out of the ``n_neighbors + 1`` results, the last column
    is dropped instead. On the CPU ``faiss.knn`` searches the features in place
    (no index copy); memory beyond the normalised copy and the result is one
    block of queries. A CPU search uses as many OpenMP threads as torch has
    intra-op threads (so ``n_jobs`` of the estimators bounds it too).
    """
    n, dim = features.shape
    # A normalised float32 C-contiguous copy (never the caller's array).
    x = F.normalize(features.detach().to("cpu", torch.float32), dim=1).contiguous().numpy()
    k = n_neighbors + 1
    if device.type == "cuda" and k <= _FAISS_GPU_MAX_K and _faiss_has_gpu(faiss):
        gpu = device.index if device.index is not None else torch.cuda.current_device()
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, faiss.IndexFlatIP(dim))
        index.add(x)

        def search(queries):
            return index.search(queries, k)[1]
    else:
        def search(queries):
            return faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
    out = torch.empty((n, n_neighbors), dtype=torch.long)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())  # the torch budget (n_jobs) applies
    try:
        for start in range(0, n, FAISS_QUERY_ROWS):
            stop = min(start + FAISS_QUERY_ROWS, n)
            # (rows, k) int64, by decreasing inner product
            found = torch.from_numpy(np.ascontiguousarray(search(x[start:stop]), dtype=np.int64))
            own = found == torch.arange(start, stop).unsqueeze(1)  # at most one True per row
            own[~own.any(dim=1), -1] = True  # self pushed out by duplicates: drop the last
            out[start:stop] = found[~own].view(stop - start, n_neighbors)
    finally:
        faiss.omp_set_num_threads(threads)
    return out


def reliability_scores(neighbors, labels):
    """Share of each sample's neighbours that carry its label (Eq. 5 of the paper).

    Parameters
    ----------
    neighbors : array-like of shape (N, n_s)
        Neighbour indices, as returned by :func:`nearest_neighbors`.
    labels : array-like of shape (N,)
        Cluster label of every sample.

    Returns
    -------
    scores : ndarray of shape (N,), float64 in [0, 1]
        A sample is *reliable* when its score is at least ``tau_c`` (0.95 in the paper).
    """
    return _same_cluster(neighbors, labels).mean(axis=1)


def _same_cluster(neighbors, labels):
    """(N, n) bool: whether each neighbour has the sample's label."""
    labels = np.asarray(labels)
    return labels[np.asarray(neighbors)] == labels[:, None]


def neighbour_agreement(labels, neighbors, n_neighbors=AGREEMENT_NEIGHBORS):
    """Share of (sample, neighbour) pairs in the same cluster, in ``[0, 1]``.

    Label-free: ``labels`` is a clustering, ``neighbors`` the nearest-neighbour
    graph of the embedding it was found in. It rises when clusters follow the
    graph's dense regions and falls when a cluster boundary cuts through one;
    ``entropy_weight="auto"`` keeps the weight whose clustering scores highest, and
    SPICE-Semi's "head" mode undoes a round whose clustering fills as many clusters
    but scores lower than the one it started from. Clusterings with the same number
    of agreeing pairs score exactly the same.

    Parameters
    ----------
    labels : array-like of shape (N,)
        Cluster of each sample.
    neighbors : array-like of shape (N, n), int
        Neighbours of each sample, nearest first.
    n_neighbors : int, default=AGREEMENT_NEIGHBORS
        How many of the first columns of ``neighbors`` count (all when fewer).

    Returns
    -------
    float
        The share of (sample, neighbour) pairs whose labels are equal.
    """
    # the mean of SPICE's reliabilities (every sample has as many neighbours), counted
    # over all pairs at once: equal counts give equal floats
    same = _same_cluster(np.asarray(neighbors)[:, :n_neighbors], labels)
    return float(np.count_nonzero(same) / same.size)
