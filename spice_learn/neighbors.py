"""Cosine nearest neighbours in blocks, and the reliability score of SPICE-Semi.

SPICE-Semi (paper section 3.3, Eq. 5) calls a sample reliable when most of its
``n_s`` nearest neighbours in the embedding space share its cluster. The
neighbour search here multiplies one block of rows at a time against all
samples and keeps the top ``n_s`` of each row, so memory is
``O(block * N + N * n_s)``, never ``N x N`` (70,000 samples would need 19.6 GB
for the full float32 similarity matrix). It runs on whatever device the
features are moved to (a GPU when given one).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["nearest_neighbors", "reliability_scores"]

#: Bytes of one block of the similarity matrix (rows x N float32 values).
DEFAULT_BLOCK_BYTES = 64 << 20


def nearest_neighbors(features, n_neighbors, *, device=None, block_bytes=DEFAULT_BLOCK_BYTES):
    """Indices of each sample's ``n_neighbors`` nearest neighbours by cosine similarity.

    Parameters
    ----------
    features : array-like or torch.Tensor of shape (N, D)
        Embeddings (need not be normalised; any float dtype).
    n_neighbors : int
        Neighbours per sample, ``1 <= n_neighbors < N``. A sample is never its
        own neighbour (even when it has exact duplicates, which are neighbours).
    device : torch.device or str, optional
        Where the products run; default: the device of ``features``.
    block_bytes : int
        Size budget of one block of the similarity matrix; the number of rows
        per block is ``block_bytes // (4 * N)`` (at least 1).

    Returns
    -------
    indices : torch.Tensor of shape (N, n_neighbors), int64, on the CPU
        Neighbours sorted by decreasing similarity.
    """
    features = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D); got shape {tuple(features.shape)}.")
    n = features.shape[0]
    if not 1 <= n_neighbors < n:
        raise ValueError(f"n_neighbors must be in [1, N - 1] = [1, {n - 1}]; got {n_neighbors}.")
    device = torch.device(device) if device is not None else features.device
    x = F.normalize(features.to(device).float(), dim=1)
    rows = max(1, int(block_bytes) // (4 * n))
    out = torch.empty((n, n_neighbors), dtype=torch.long)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        sim = x[start:stop] @ x.T  # (rows, N)
        sim[torch.arange(stop - start), torch.arange(start, stop)] = float("-inf")
        out[start:stop] = sim.topk(n_neighbors, dim=1).indices.cpu()
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
    neighbors = np.asarray(neighbors)
    labels = np.asarray(labels)
    return (labels[neighbors] == labels[:, None]).mean(axis=1)
