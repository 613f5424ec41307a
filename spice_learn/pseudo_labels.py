"""Semantic pseudo-labelling of SPICE-Self (paper Eqs. 1-3), for all heads at once.

For a batch of ``M`` samples with embeddings ``F`` (``M x D``, L2-normalised) and
each head's predictions ``P`` (``M x k``):

1. per cluster ``c``, the ``n_t = r * M / k`` samples with the largest ``P[:, c]``
   are the cluster's most confident members (Eq. 1);
2. their mean embedding is the prototype ``gamma_c`` (Eq. 2);
3. the ``M / k`` samples with the highest cosine similarity to ``gamma_c`` get
   pseudo-label ``c`` (Eq. 3). A sample can be picked by several clusters
   ("overlap assignment", which the paper found better).

Memory stays ``O(H * k * M)``: no ``M x M`` matrix is formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["n_confident", "cluster_prototypes", "assign_pseudo_labels"]


def n_confident(n_samples, n_clusters, confidence_ratio):
    """``n_t = r * M / k`` of Eq. 1 (at least 1): samples averaged per prototype."""
    return max(1, int(confidence_ratio * n_samples / n_clusters))


def cluster_prototypes(features, probs, n_top):
    """Prototype of every cluster of every head (Eqs. 1-2).

    Parameters
    ----------
    features : torch.Tensor of shape (M, D)
    probs : torch.Tensor of shape (H, M, k)
    n_top : int
        Number of most confident samples averaged per cluster.

    Returns
    -------
    prototypes : torch.Tensor of shape (H, k, D)
        Mean embedding of the ``n_top`` most confident samples of each cluster.
    """
    n_heads, m, k = probs.shape
    top = probs.topk(n_top, dim=1).indices  # (H, n_top, k)
    weights = torch.zeros((n_heads, k, m), dtype=features.dtype, device=features.device)
    weights.scatter_(2, top.transpose(1, 2), 1.0 / n_top)
    return torch.matmul(weights, features)


def assign_pseudo_labels(features, probs, confidence_ratio):
    """Pick pseudo-labelled samples for every head (Eqs. 1-3).

    Parameters
    ----------
    features : torch.Tensor of shape (M, D)
        L2-normalised embeddings of the original images.
    probs : torch.Tensor of shape (H, M, k)
        Predictions of each head on weak views of the same samples.
    confidence_ratio : float
        ``r`` in (0, 1]: the share of the balanced cluster size ``M / k`` used
        to build prototypes.

    Returns
    -------
    indices : torch.Tensor of shape (H, k * (M // k)), long
        Row indices into ``features``, cluster by cluster.
    labels : torch.Tensor of shape (H, k * (M // k)), long
        The pseudo-label of each picked sample.
    """
    n_heads, m, k = probs.shape
    per_cluster = max(1, m // k)
    n_top = n_confident(m, k, confidence_ratio)
    prototypes = F.normalize(cluster_prototypes(features, probs, n_top), dim=2)
    similarity = torch.matmul(prototypes, features.T)  # (H, k, M)
    indices = similarity.topk(per_cluster, dim=2).indices  # (H, k, per_cluster)
    labels = torch.arange(k, device=probs.device).view(1, k, 1).expand_as(indices)
    return indices.reshape(n_heads, -1), labels.reshape(n_heads, -1)
