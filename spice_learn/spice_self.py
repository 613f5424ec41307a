"""SPICE-Self (paper Algorithm 1): train cluster heads on cached frozen embeddings.

Per training step, for a batch of ``M`` samples:

1. ``F`` = embeddings of the original images, ``P`` = every head's softmax on a
   weak view of each sample (a random cached view);
2. pseudo-labels from prototypes (:func:`~spice_learn.pseudo_labels.assign_pseudo_labels`);
3. ``M // m2`` Adam updates of the heads on strong views of the labelled samples
   (a random cached view per sample and head) with double-softmax cross-entropy,
   plus an optional entropy term.

After training, the head with the lowest DS-CE over the whole data set
(``M = N``, same three steps, original/first weak/first strong views) is
selected — no labels involved (paper section 3.2 and 4.5.3).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import distributed
from .heads import (MultiHeadClassifier, head_probabilities, resolve_hidden_dim, step_heads,
                    train_epochs)
from .losses import double_softmax_cross_entropy, entropy_regularised
from .neighbors import AGREEMENT_NEIGHBORS, neighbour_agreement
from .pseudo_labels import assign_pseudo_labels, cluster_prototypes, n_confident
from .runtime import autocast_dtype, draw_generator
from .scan_heads import (
    SCAN_ENTROPY_WEIGHTS,
    default_scan_epochs,
    default_scan_minibatch_size,
    scan_neighbors,
    scan_head_epochs,
    scan_selection_losses,
)

__all__ = [
    "SPICE_HEAD_EPOCHS",
    "SELECTION_LOSS_NAMES",
    "HEAD_LEARNING_RATES",
    "HeadSettings",
    "SpiceSelfResult",
    "default_batch_size",
    "default_minibatch_size",
    "default_entropy_weight",
    "fit_spice_self",
    "train_heads",
    "spice_head_epochs",
    "head_selection_losses",
    "head_probabilities",
    "cluster_centers",
    "warn_empty_clusters",
    "rescaled_ds_ce",
]

#: The label-free loss that selects a head, by ``head_objective``.
SELECTION_LOSS_NAMES = {"scan": "SCAN", "spice": "DS-CE"}
#: ``max_epochs="auto"`` with ``head_objective="spice"`` (the paper's 100 epochs).
SPICE_HEAD_EPOCHS = 100
#: ``learning_rate="auto"``: the official SPICE-Self value, and Adam's usual 1e-3 for SCAN heads.
HEAD_LEARNING_RATES = {"spice": 5e-3, "scan": 1e-3}


def default_batch_size(n_clusters):
    """The paper's ``M``: 1000 for 10 clusters, 1500 for 15, 2000 for 20, 5000 for 200."""
    return int(min(max(100 * n_clusters, 1000), 5000))


def default_minibatch_size(n_clusters):
    """The paper's ``m2``: 128, and 256 for 200 clusters (here: from 100 clusters on)."""
    return 256 if n_clusters >= 100 else 128


def default_entropy_weight(objective, n_clusters):
    """``entropy_weight="auto"``: for "scan" heads the tuple of candidate weights
    :data:`~spice_learn.scan_heads.SCAN_ENTROPY_WEIGHTS` (one is chosen without
    labels in :func:`fit_spice_self`); for "spice" heads 0 below 50 clusters and 1
    from 50 on."""
    if objective == "scan":
        return SCAN_ENTROPY_WEIGHTS
    return 0.0 if n_clusters < 50 else 1.0


@dataclass(frozen=True)
class HeadSettings:
    """How SPICE-Self trains and selects its heads; None stands for "auto", except in
    ``hidden_dim``.

    ``objective`` ("scan" or "spice"), ``n_heads``, ``hidden_dim`` (None: the feature
    dimension; "auto": :func:`~spice_learn.heads.resolve_hidden_dim`), ``batch_size``
    (``M``, "spice" only), ``minibatch_size``, ``max_epochs``, ``learning_rate``,
    ``confidence_ratio`` (``r``) and ``entropy_weight``, as the
    :class:`~spice_learn.SpiceClustering` parameters. Resolved, ``entropy_weight`` is a
    float, or a tuple of candidate weights for :func:`fit_spice_self` to choose from.
    """

    objective: str = "scan"
    n_heads: int = 10
    hidden_dim: int | str | None = "auto"
    batch_size: int | None = None
    minibatch_size: int | None = None
    max_epochs: int | None = None
    learning_rate: float | None = None
    confidence_ratio: float = 0.5
    entropy_weight: float | tuple | None = None

    def resolved(self, n_samples, n_clusters, dim=None):
        """These settings with every "auto" value resolved for ``n_samples`` samples of
        dimension ``dim`` in ``n_clusters`` clusters."""
        scan, k, n = self.objective == "scan", n_clusters, n_samples
        return replace(
            self,
            hidden_dim=(self.hidden_dim if dim is None
                        else resolve_hidden_dim(self.hidden_dim, dim)),
            batch_size=self.batch_size or default_batch_size(k),
            minibatch_size=self.minibatch_size or (
                default_scan_minibatch_size(n) if scan else default_minibatch_size(k)),
            max_epochs=self.max_epochs or (default_scan_epochs(n) if scan else SPICE_HEAD_EPOCHS),
            learning_rate=self.learning_rate or HEAD_LEARNING_RATES[self.objective],
            entropy_weight=(default_entropy_weight(self.objective, k)
                            if self.entropy_weight is None else self.entropy_weight),
        )


@dataclass(frozen=True)
class SpiceSelfResult:
    """Result of :func:`fit_spice_self`.

    Attributes
    ----------
    heads : MultiHeadClassifier
        Every trained head.
    losses : ndarray of shape (n_heads,)
        Label-free selection loss of each head (lower is better).
    best : int
        Index of the selected head.
    classifier : MultiHeadClassifier
        The selected head alone.
    self_labels : ndarray of shape (n_samples,)
        Its cluster of each sample (original view).
    history : ndarray of shape (n_epochs, n_heads)
        Mean training loss per epoch and head.
    settings : HeadSettings
        The resolved settings, with the chosen ``entropy_weight``.
    weight_scores : dict or None
        Candidate entropy weight to the :func:`~spice_learn.neighbors.neighbour_agreement`
        of its selected head, when there were candidates to choose from.
    """

    heads: MultiHeadClassifier
    losses: np.ndarray
    best: int
    classifier: MultiHeadClassifier
    self_labels: np.ndarray
    history: np.ndarray
    settings: HeadSettings
    weight_scores: dict | None = None


def fit_spice_self(cache, neighbors, n_clusters, settings, *, seed, device, verbose=0,
                   log=None):
    """SPICE-Self: train the heads on the view cache and select one without labels.

    Callable once per candidate number of clusters with the same cache and
    neighbours.

    Parameters
    ----------
    cache : ViewCache
    neighbors : torch.Tensor of shape (N, n) or None
        Nearest neighbours sorted by similarity (:func:`~spice_learn.view_cache.neighbour_graph`);
        "scan" heads use the first :func:`~spice_learn.scan_heads.scan_neighbors`
        columns, "spice" heads none (None is fine there).
    n_clusters : int
    settings : HeadSettings
    seed : int
    device : torch.device
    verbose : int
    log : callable or None
        Called with one line on the selected head (and one on the chosen weight).

    Returns
    -------
    SpiceSelfResult

    Raises
    ------
    ValueError
        When the settings hold several entropy weights and ``neighbors`` is None
        (the weights are compared on the neighbour graph).

    Notes
    -----
    When the resolved ``entropy_weight`` is a tuple of candidates, heads are trained
    at each weight with the same seed for ``max_epochs``, one head is selected per
    weight as usual, and the weight whose selected head's clustering shares the most
    pairs of :data:`~spice_learn.neighbors.AGREEMENT_NEIGHBORS` nearest neighbours
    (:func:`~spice_learn.neighbors.neighbour_agreement`) is chosen, among the weights
    whose clustering uses the most clusters (all ``n_clusters`` unless no weight's
    does): merging clusters can only raise the agreement. ``weight_scores`` are the
    agreements the choice was made on. The choice is made on the final clusterings: a
    lower weight may still be far from its final clustering after a third of the
    epochs (USPS, weight 1: ACC 0.77 after 5 of 16 epochs, 0.98 at the end), so a
    choice made then kept a worse weight.

    Under torchrun every process trains the same heads; rank 0's heads, losses,
    labels and choice of weight are broadcast (GPUs need not agree to the last bit).
    """
    n, dim = cache.original.shape
    s = settings.resolved(n, n_clusters, dim)
    if isinstance(s.entropy_weight, tuple) and len(s.entropy_weight) > 1 and neighbors is None:
        raise ValueError("fit_spice_self needs the neighbour graph to choose among the "
                         f"entropy weights {s.entropy_weight}; got neighbors=None.")
    graph = None if s.objective != "scan" else neighbors[:, : scan_neighbors(n, n_clusters)]
    weights = s.entropy_weight if isinstance(s.entropy_weight, tuple) else (s.entropy_weight,)
    cache = cache.to(device)  # once: every weight's training shares it
    each = [replace(s, entropy_weight=w) for w in weights]
    fits = [_train_and_select(_head_epochs(cache, graph, n_clusters, e, seed=seed, device=device),
                              s.max_epochs, cache, graph, e, verbose=verbose) for e in each]
    scores, pick = None, 0
    if len(fits) > 1:  # label-free: the clustering that best follows the neighbour graph
        graph_on_host = neighbors[:, :AGREEMENT_NEIGHBORS].cpu()  # all, when fewer
        n_agree = graph_on_host.shape[1]
        pick, scores = _choose_weight(fits, weights, graph_on_host)
    s = each[pick]
    heads, history, losses, best, classifier, labels = fits[pick]
    if log is not None:
        name = SELECTION_LOSS_NAMES[s.objective]
        if scores is not None:
            log(f"SPICE-Self ({s.objective} heads): entropy weight {s.entropy_weight:g} "
                f"(its clusters share {scores[s.entropy_weight]:.1%} of {n_agree}-neighbour "
                f"pairs; "
                + ", ".join(f"{a:.1%} with {w:g}" for w, a in scores.items()) + ")")
        log(f"SPICE-Self ({s.objective} heads): selected head {best} of {s.n_heads} "
            f"({name} {losses[best]:.4f}; all heads {losses.min():.4f}-{losses.max():.4f})")
    return SpiceSelfResult(heads, losses, best, classifier, labels, history, s, scores)


def _choose_weight(fits, weights, graph):
    """``(pick, scores)``: the index of the weight whose clustering shares the most pairs
    of ``graph`` among the weights whose clustering fills the most clusters, and each
    weight's share."""
    agreement = [neighbour_agreement(fit[-1], graph, graph.shape[1]) for fit in fits]
    scores = {float(w): a for w, a in zip(weights, agreement)}
    # Merging clusters only raises the agreement: only the weights whose clustering
    # uses the most clusters (all n_clusters, as a rule) are eligible.
    n_used = np.array([len(np.unique(fit[-1])) for fit in fits])
    agreement = np.where(n_used == n_used.max(), agreement, -np.inf)
    pick = int(np.argmax(agreement))  # ties: the earlier (SCAN's own) weight
    return distributed.broadcast_object((pick, scores))  # rank 0's graph decides


def _head_epochs(cache, graph, n_clusters, s, *, seed, device):
    """The epoch generator that trains the heads of resolved settings ``s`` (one
    entropy weight)."""
    common = dict(n_clusters=n_clusters, n_heads=s.n_heads, hidden_dim=s.hidden_dim,
                  minibatch_size=s.minibatch_size, learning_rate=s.learning_rate,
                  entropy_weight=s.entropy_weight, seed=seed, device=device)
    if s.objective == "scan":
        return scan_head_epochs(cache, graph, **common)
    return spice_head_epochs(cache, batch_size=s.batch_size,
                             confidence_ratio=s.confidence_ratio, **common)


def _train_and_select(epochs, n_epochs, cache, graph, s, *, verbose):
    """Train the heads of ``epochs`` (:func:`_head_epochs`) ``n_epochs`` further and
    select one: ``(heads, history, losses, best, classifier, labels)``."""
    desc = "SCAN heads" if s.objective == "scan" else "SPICE-Self"
    heads, history = train_epochs(epochs, n_epochs, desc=desc, verbose=verbose)
    distributed.broadcast_module(heads)  # identical on every process, whatever the GPU
    if s.objective == "scan":
        losses = scan_selection_losses(heads, cache, graph, entropy_weight=s.entropy_weight)
    else:
        losses = head_selection_losses(heads, cache, confidence_ratio=s.confidence_ratio)
    losses = distributed.broadcast_object(losses)
    best = int(np.argmin(losses))
    classifier = heads.select([best])
    probs = head_probabilities(classifier, cache.original[:])
    labels = distributed.broadcast_object(probs[0].argmax(dim=1).cpu().numpy())
    return heads, history, losses, best, classifier, labels


def rescaled_ds_ce(loss, n_clusters):
    """A DS-CE selection loss as a score comparable across ``n_clusters``:
    ``1 - (L - L_min) / (log k - L_min)`` with ``L_min = log(e + k - 1) - 1``, so 1
    for one-hot predictions of every pseudo-label and 0 for uniform ones (1 when
    ``k = 1``, where every prediction is one-hot)."""
    k = n_clusters
    if k == 1:
        return 1.0
    best = np.log(np.e + k - 1) - 1
    return float(1.0 - (loss - best) / (np.log(k) - best))


def warn_empty_clusters(labels, n_clusters, stacklevel=2):
    """Warn when some of the ``n_clusters`` clusters get no sample of ``labels``."""
    k, n_used = n_clusters, len(np.unique(labels))
    if n_used < k:
        warnings.warn(
            f"{k - n_used} of the n_clusters={k} clusters are empty: no training sample "
            "is assigned to them. The data may hold fewer groups than asked for, or "
            "the embedding does not separate them; try head_objective='scan' (its "
            "entropy term keeps clusters in use) or fewer clusters.", UserWarning,
            stacklevel=stacklevel + 1)


def cluster_centers(classifier, features, confidence_ratio):
    """Cluster of each sample and the prototypes (Eq. 2) of a one-head ``classifier``.

    Returns
    -------
    labels : ndarray of shape (N,)
    centers : ndarray of shape (n_clusters, D)
        Mean of the ``n_confident`` most confident samples of each cluster.
    """
    probs = head_probabilities(classifier, features)
    n_top = n_confident(features.shape[0], probs.shape[2], confidence_ratio)
    centers = cluster_prototypes(features.to(probs.device).float(), probs, n_top)[0]
    return probs[0].argmax(dim=1).cpu().numpy(), centers.cpu().numpy()


def train_heads(
    cache, *, n_clusters, n_heads, hidden_dim, batch_size, minibatch_size, max_epochs,
    learning_rate, confidence_ratio, entropy_weight, seed, device, verbose=0,
):
    """Train ``n_heads`` heads together with semantic pseudo-labels.

    Parameters
    ----------
    cache : ViewCache
        Embeddings of original, weak and strong views (any device, any float dtype).
    n_clusters, n_heads, hidden_dim : int
    batch_size : int
        ``M``, samples per pseudo-labelling step (clipped to ``N``).
    minibatch_size : int
        ``m2``, samples per head in each gradient step.
    max_epochs : int
    learning_rate : float
        Adam learning rate (no weight decay). The heads' forward passes run
        under bfloat16 autocast where the device supports it (float32 master
        weights; about 1.7x faster on a CPU with AVX512-BF16).
    confidence_ratio : float
        ``r`` of Eq. 1.
    entropy_weight : float
        Weight of :func:`~spice_learn.losses.negative_entropy_of_mean` (0 = off).
    seed : int
    device : torch.device
    verbose : int

    Returns
    -------
    heads : MultiHeadClassifier
        The trained heads, in eval mode, on ``device``.
    history : ndarray of shape (max_epochs, n_heads)
        Mean training loss of each head per epoch (DS-CE, plus the entropy
        term when ``entropy_weight > 0``).
    """
    epochs = spice_head_epochs(cache, n_clusters=n_clusters, n_heads=n_heads,
                               hidden_dim=hidden_dim, batch_size=batch_size,
                               minibatch_size=minibatch_size, learning_rate=learning_rate,
                               confidence_ratio=confidence_ratio,
                               entropy_weight=entropy_weight, seed=seed, device=device)
    return train_epochs(epochs, max_epochs, desc="SPICE-Self", verbose=verbose)


def spice_head_epochs(cache, *, n_clusters, n_heads, hidden_dim, batch_size, minibatch_size,
                      learning_rate, confidence_ratio, entropy_weight, seed, device):
    """The training of :func:`train_heads` as an endless generator: it yields
    ``(heads, losses)`` after each epoch (``losses`` the epoch's mean loss of each
    head), so that a caller can pause a training and go on with it later
    (:func:`~spice_learn.heads.train_epochs`)."""
    cache = cache.to(device)
    n, dim = cache.original.shape
    gen = torch.Generator().manual_seed(seed)
    heads = MultiHeadClassifier(n_heads, dim, hidden_dim, n_clusters, generator=gen).to(device)
    draws = draw_generator(gen, device, seed, 1)  # the steps' draws, on the device
    optimizer = torch.optim.Adam(heads.parameters(), lr=learning_rate, fused=True)
    m = min(batch_size, n)
    steps_per_batch = max(1, m // minibatch_size)
    # bfloat16 autocast where the hardware has it (no loss scaling needed).
    amp = autocast_dtype(device, bf16_only=True)
    while True:
        perm = torch.randperm(n, generator=draws, device=device)
        epoch_loss, n_updates = torch.zeros(n_heads, device=device), 0
        for b in range(max(1, n // m)):
            idx = perm[b * m : (b + 1) * m]
            weak_view = torch.randint(cache.weak.shape[0], (len(idx),), generator=draws,
                                      device=device)
            features = cache.original[idx].float()
            heads.eval()
            with torch.no_grad(), _autocast(device, amp):
                probs = heads(cache.weak[weak_view, idx].float()).float().softmax(dim=2)
            picked, labels = assign_pseudo_labels(features, probs, confidence_ratio)
            heads.train()
            order = torch.rand(picked.shape, generator=draws,
                               device=device).argsort(dim=1)
            picked = idx[picked.gather(1, order)]  # (H, L) indices into the data set
            labels = labels.gather(1, order)
            views = torch.randint(cache.strong.shape[0], picked.shape, generator=draws,
                                  device=device)
            size = min(minibatch_size, picked.shape[1])
            for v in range(min(steps_per_batch, picked.shape[1] // size)):
                cols = slice(v * size, (v + 1) * size)
                x = cache.strong[views[:, cols], picked[:, cols]].float()  # (H, m2, D)
                with _autocast(device, amp):
                    logits = heads(x)
                probs = logits.float().softmax(dim=2)
                loss = entropy_regularised(double_softmax_cross_entropy(probs, labels[:, cols]),
                                           probs, entropy_weight)
                epoch_loss += step_heads(optimizer, loss)
                n_updates += 1
        yield heads, (epoch_loss / max(n_updates, 1)).cpu().numpy()


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def head_selection_losses(heads, cache, *, confidence_ratio, chunk_size=8192):
    """DS-CE of every head over the whole data set (``M = N``), shape ``(H,)``.

    Steps 1-3 of Algorithm 1 on all samples at once: predictions on the first
    weak view, prototypes and pseudo-labels from the original embeddings, DS-CE
    on the first strong view. Lower is better; labels are never used.
    """
    device = next(heads.parameters()).device
    features = cache.original[:].to(device).float()
    probs = head_probabilities(heads, cache.weak[0], chunk_size=chunk_size)
    picked, labels = assign_pseudo_labels(features, probs, confidence_ratio)
    strong = cache.strong[0].to(device)
    total = torch.zeros(heads.n_heads, device=device)
    for s in range(0, picked.shape[1], chunk_size):
        cols = slice(s, s + chunk_size)
        x = strong[picked[:, cols]].float()  # (H, chunk, D)
        p = heads(x).softmax(dim=2)
        total += double_softmax_cross_entropy(p, labels[:, cols]) * x.shape[1]
    return (total / picked.shape[1]).cpu().numpy()
