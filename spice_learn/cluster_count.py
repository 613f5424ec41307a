"""Choosing the number of clusters without labels (``n_clusters="auto"``).

This goes beyond SPICE, whose ``k`` is given. Stage 1, the cached views and the
neighbour search are shared by every candidate; only the cluster heads are
trained per candidate ``k``, with the same objective as the final fit but fewer
heads and epochs (:func:`default_search_settings`). Each candidate is scored by
the **silhouette** (Rousseeuw, 1987) of its selected head's clustering in the
stage-1 embedding, with cosine distances: for each sample, how much closer it is
to its own cluster than to the nearest other one, averaged. Splitting a tight
group in two puts near neighbours in "other" clusters and merging two groups
puts far samples in one cluster; both lower the silhouette. The candidate with
the highest score wins; the final heads are then trained at that ``k`` with the
full settings.

Why this criterion: on SimCLR embeddings of sklearn digits, its 0-4 subset, a
3-class MNIST subset, USPS and the Fashion-MNIST subset, the silhouette of the
head clusterings peaked at or next to the number of classes on 4 of the 5 (7
for USPS's 10); graph modularity of the same clusterings and the agreement
between heads did so on 2, the eigengap of the neighbour graph on none (they
kept rising past the number of classes: styles of handwriting are real groups
in the embedding), and the SCAN loss falls with ``k`` by construction. With the
library's defaults, ``benchmarks/run_n_clusters.py`` measures the whole
procedure. It is a guide, not an oracle: on
data whose classes overlap in the embedding (e.g. shirts and pullovers) it
tends to choose fewer clusters, and ``n_clusters_scores_`` lets you look at the
whole curve.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Integral

import numpy as np
import torch
from sklearn.metrics import silhouette_score

from .scan_heads import SCAN_ENTROPY_WEIGHT
from .spice_self import fit_spice_self

__all__ = [
    "AUTO_MAX_CLUSTERS",
    "NClustersSearch",
    "check_n_clusters",
    "default_search_settings",
    "cosine_silhouette",
    "search_n_clusters",
]

#: ``n_clusters="auto"`` tries 2 to this many clusters (fewer for small data sets).
AUTO_MAX_CLUSTERS = 20
#: Samples the silhouette is computed on (a fixed random subset beyond this).
SILHOUETTE_SAMPLES = 4000


def check_n_clusters(value, n_samples=None):
    """Validate ``n_clusters`` and return it as an int or a sorted tuple of candidates.

    Parameters
    ----------
    value : int, "auto" or iterable of int
        An int >= 1; ``"auto"``: 2 to :data:`AUTO_MAX_CLUSTERS`; or the candidates
        (e.g. ``range(2, 11)``), each >= 2.
    n_samples : int, optional
        Number of training samples, checked against the candidates (each needs at
        least 2 samples per cluster on average). ``"auto"`` is cut to
        ``n_samples // 2``.

    Returns
    -------
    int or tuple of int
    """
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"n_clusters must be an int >= 1, 'auto' or a range of ints >= 2; "
                             f"got {value!r}.")
        top = AUTO_MAX_CLUSTERS if n_samples is None else min(AUTO_MAX_CLUSTERS, n_samples // 2)
        if top < 2:
            raise ValueError(f"n_clusters='auto' needs at least 4 samples; got {n_samples}.")
        return tuple(range(2, top + 1))
    if isinstance(value, Integral) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"n_clusters must be >= 1; got {value}.")
        if n_samples is not None and value > n_samples:
            raise ValueError(f"n_clusters={value} must be <= n_samples={n_samples}.")
        return int(value)
    if isinstance(value, (bool, float, bytes, dict)) or value is None or not _iterable(value):
        raise TypeError(f"n_clusters must be an int, 'auto' or a range/list of ints; "
                        f"got {type(value).__name__}.")
    candidates = list(value)
    if not candidates:
        raise ValueError("n_clusters is an empty range: give at least one candidate.")
    for k in candidates:
        if not isinstance(k, Integral) or isinstance(k, bool):
            raise TypeError(f"n_clusters candidates must be ints; got {k!r}.")
        if k < 2:
            raise ValueError(f"n_clusters candidates must be >= 2 (one cluster has no "
                             f"silhouette); got {k}.")
    candidates = tuple(sorted({int(k) for k in candidates}))
    if n_samples is not None and candidates[-1] > n_samples // 2:
        raise ValueError(f"n_clusters candidate {candidates[-1]} is too large for "
                         f"{n_samples} samples: at most n_samples // 2 = {n_samples // 2}.")
    return candidates


def _iterable(value):
    try:
        iter(value)
    except TypeError:
        return False
    return True


def default_search_settings(settings, n_samples):
    """Head settings for scoring candidates: the final ones (``"auto"`` resolved for
    ``n_samples``) with at most 3 heads, a third of the epochs (at least 5) and, for
    "scan" heads with ``entropy_weight="auto"``, SCAN's weight alone, so a search
    over 19 candidates costs a few full head trainings."""
    epochs = settings.resolved(n_samples, 2).max_epochs
    weight = settings.entropy_weight
    if weight is None and settings.objective == "scan":
        weight = SCAN_ENTROPY_WEIGHT  # one weight, not the final fit's candidates
    return replace(settings, n_heads=min(settings.n_heads, 3),
                   max_epochs=max(5, epochs // 3), entropy_weight=weight)


def cosine_silhouette(features, labels, *, max_samples=SILHOUETTE_SAMPLES, seed=0):
    """Mean silhouette of ``labels`` under cosine distance, in ``[-1, 1]``
    (:func:`sklearn.metrics.silhouette_score`).

    Parameters
    ----------
    features : torch.Tensor or ndarray of shape (N, D)
    labels : array-like of shape (N,)
    max_samples : int
        Above this many samples, the silhouette of a fixed random subset of this size.
    seed : int

    Returns
    -------
    float
        0 when fewer than two clusters are in use.
    """
    labels = np.asarray(labels)
    if isinstance(features, torch.Tensor):
        features = features.float().cpu().numpy()
    if len(np.unique(labels)) < 2:
        return 0.0
    sample_size = max_samples if labels.shape[0] > max_samples else None
    return float(silhouette_score(features, labels, metric="cosine", sample_size=sample_size,
                                  random_state=seed))


@dataclass(frozen=True)
class NClustersSearch:
    """Result of :func:`search_n_clusters`.

    Attributes
    ----------
    candidates : tuple of int
    scores : ndarray of shape (n_candidates,)
        Silhouette of each candidate's clustering (higher is better).
    best : int
        The chosen number of clusters.
    """

    candidates: tuple
    scores: np.ndarray
    best: int

    def scores_by_k(self):
        """``{k: score}`` for every candidate, in order."""
        return {int(k): float(v) for k, v in zip(self.candidates, self.scores)}


def search_n_clusters(cache, neighbors, candidates, settings, *, seed, device, verbose=0,
                      log=None):
    """Score each candidate number of clusters without labels.

    Parameters
    ----------
    cache : ViewCache
    neighbors : torch.Tensor or None
        As for :func:`~spice_learn.spice_self.fit_spice_self`.
    candidates : tuple of int
    settings : HeadSettings
        The final head settings; each candidate is trained with
        :func:`default_search_settings` of them.
    seed : int
    device : torch.device
    verbose : int
    log : callable or None

    Returns
    -------
    NClustersSearch
    """
    embedding = cache.original[:].float().cpu().numpy()  # once, for every candidate
    settings = default_search_settings(settings, embedding.shape[0])
    scores, complete = [], []
    for k in candidates:
        result = fit_spice_self(cache, neighbors, k, settings, seed=seed, device=device,
                                verbose=0)
        n_used = len(np.unique(result.self_labels))
        scores.append(cosine_silhouette(embedding, result.self_labels, seed=seed))
        complete.append(n_used == k)
        if log is not None:
            log(f"n_clusters={k}: silhouette {scores[-1]:.4f}"
                + ("" if n_used == k else f" ({k - n_used} clusters empty: not eligible)"))
    scores = np.asarray(scores)
    # A candidate that leaves clusters empty is a clustering into fewer clusters: it
    # cannot stand for its own k (unless no candidate fills all of its clusters).
    eligible = np.where(complete, scores, -np.inf) if any(complete) else scores
    best = candidates[int(np.argmax(eligible))]
    return NClustersSearch(tuple(candidates), scores, int(best))
