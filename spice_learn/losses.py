"""Every loss of the three stages, as plain functions of tensors.

* Stage 1, SimCLR: :func:`nt_xent_loss`.
* Stage 2, cluster heads (per head; shapes: ``H`` heads, ``B`` samples, ``k``
  clusters): SPICE-Self's :func:`double_softmax_cross_entropy`, SCAN's
  :func:`neighbour_consistency`, and :func:`negative_entropy_of_mean` added to
  either by :func:`entropy_regularised`.
* Stage 3, SPICE-Semi: :func:`semi_loss` (Eq. 6), whose unlabelled term is
  :func:`fixmatch_loss`.

The training loops (network passes, gathering across processes, optimiser
steps) live with their stages; nothing here touches a model or an optimiser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent_loss", "double_softmax_cross_entropy", "negative_entropy_of_mean",
           "neighbour_consistency", "entropy_regularised", "fixmatch_loss", "semi_loss"]


def nt_xent_loss(z1, z2, temperature):
    """NT-Xent (normalised temperature-scaled cross-entropy) of SimCLR.

    Parameters
    ----------
    z1, z2 : torch.Tensor of shape (B, P)
        Projections of the two views; row ``i`` of both comes from image ``i``.
    temperature : float

    Returns
    -------
    loss : torch.Tensor (scalar)
        Mean over the ``2B`` views of ``-log softmax(sim / t)[positive]``, where
        ``sim`` is the cosine similarity to the other ``2B - 1`` views.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    # [n, ..., 2n-1, 0, ..., n-1], made on z's device (a copy from the host waits for the GPU)
    targets = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(logits, targets)


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


def entropy_regularised(loss, probs, entropy_weight):
    """``loss + entropy_weight * negative_entropy_of_mean(probs)``, or ``loss`` itself
    when the weight is 0.

    Parameters
    ----------
    loss : torch.Tensor of shape (H,)
        Per-head loss (DS-CE or SCAN's consistency).
    probs : torch.Tensor of shape (H, B, k)
        The predictions the loss was computed on.
    entropy_weight : float
    """
    if entropy_weight:
        loss = loss + entropy_weight * negative_entropy_of_mean(probs)
    return loss


def fixmatch_loss(logits_weak, logits_strong, threshold):
    """Unlabelled term of SPICE-Semi's Eq. 6 (FixMatch's consistency loss).

    Parameters
    ----------
    logits_weak, logits_strong : torch.Tensor of shape (B, k)
        Predictions on a weak and a strong view of the same samples.
    threshold : float
        ``tau``: a sample counts only when its weak-view confidence is at least this.

    Returns
    -------
    loss : torch.Tensor (scalar)
        ``mean_i(mask_i * CE(argmax q_i, logits_strong_i))`` over all ``B``
        samples (masked samples count as zeros, as in FixMatch).
    mask : torch.Tensor of shape (B,), bool
        Which samples passed the threshold.
    """
    with torch.no_grad():
        confidence, target = logits_weak.float().softmax(dim=1).max(dim=1)
        mask = confidence >= threshold
    ce = F.cross_entropy(logits_strong.float(), target, reduction="none")
    return (ce * mask).mean(), mask


def semi_loss(logits, labelled_targets, threshold):
    """The two terms of SPICE-Semi's Eq. 6.

    Parameters
    ----------
    logits : torch.Tensor of shape (L + 2U, k)
        Predictions ordered as ``[labelled weak; unlabelled weak; unlabelled strong]``.
    labelled_targets : torch.Tensor of shape (L,), dtype long
        Cluster of each reliable (labelled) sample.
    threshold : float
        ``tau`` of :func:`fixmatch_loss`.

    Returns
    -------
    supervised : torch.Tensor (scalar)
        Cross-entropy on the labelled samples.
    unlabelled : torch.Tensor (scalar)
        :func:`fixmatch_loss` of the unlabelled samples.
    mask : torch.Tensor of shape (U,), bool
        Which unlabelled samples passed the threshold.
    """
    n_labelled = len(labelled_targets)
    supervised = F.cross_entropy(logits[:n_labelled], labelled_targets)
    weak_u, strong_u = logits[n_labelled:].chunk(2)
    unlabelled, mask = fixmatch_loss(weak_u, strong_u, threshold)
    return supervised, unlabelled, mask
