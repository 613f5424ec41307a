"""Losses of the cluster heads (SPICE-Self and SCAN), per head. Shapes: ``H`` heads, ``B`` samples, ``k`` clusters."""

from __future__ import annotations

import torch.nn.functional as F

__all__ = ["double_softmax_cross_entropy", "negative_entropy_of_mean", "neighbour_consistency"]


def double_softmax_cross_entropy(probs, targets):
    """DS-CE (paper Eq. 4): cross-entropy of ``softmax(probs)`` where ``probs``
    is already a softmax output.

    Because ``probs`` lies in [0, 1], the loss stays above zero even for one-hot
    predictions, which keeps pushing the heads towards confident outputs.

    Parameters
    ----------
    probs : torch.Tensor of shape (H, B, k)
        Softmax probabilities of each head.
    targets : torch.Tensor of shape (H, B), dtype long
        Pseudo-labels of each head's samples.

    Returns
    -------
    loss : torch.Tensor of shape (H,)
        Mean DS-CE of each head.
    """
    # F.cross_entropy applies the second softmax; class axis must be dim 1.
    return F.cross_entropy(probs.transpose(1, 2), targets, reduction="none").mean(dim=1)


def negative_entropy_of_mean(probs):
    """Negative entropy of each head's mean prediction, shape ``(H,)``.

    Adding it to the loss (with a positive weight) spreads samples over all
    clusters; the paper needed it only for many clusters (200).
    """
    mean = probs.mean(dim=1).clamp_min(1e-8)
    return (mean * mean.log()).sum(dim=1)


def neighbour_consistency(probs, neighbour_probs):
    """SCAN's consistency term: ``-log <p_i, p_j>`` for a sample ``i`` and one of its
    nearest neighbours ``j``, averaged over the batch, shape ``(H,)``.

    It is small when a sample and its neighbour are assigned to the same cluster
    with confidence (Van Gansbeke et al., "SCAN: Learning to Classify Images
    without Labels", ECCV 2020, Eq. 2).

    Parameters
    ----------
    probs, neighbour_probs : torch.Tensor of shape (H, B, k)
        Softmax probabilities of each head for the samples and their neighbours.
    """
    agreement = (probs * neighbour_probs).sum(dim=2).clamp_min(1e-7)
    return -agreement.log().mean(dim=1)
