"""SPICE-Semi (paper section 3.3, Eq. 6): refine the clustering with reliable
pseudo-labels and FixMatch-style consistency.

Reliable samples (:mod:`spice_learn.neighbors`) act as labelled data; every
sample is unlabelled data. Each step draws ``B`` reliable samples and ``mu * B``
samples from the whole set and minimises

``CE(label, f(weak(x_l))) + mean(1[max q >= tau] * CE(argmax q, f(strong(x_u))))``

with ``q = softmax(f(weak(x_u)))`` (no gradient through ``q``), as FixMatch does.

Two modes:

* :func:`train_semi_head` trains a fresh classifier head on the cached
  embeddings of the weak and strong views (the backbone stays frozen): seconds
  on a CPU.
* :func:`finetune` trains backbone and head end to end on augmented images
  (the paper's setting), with an exponential moving average (EMA) of the
  weights, bfloat16 autocast and channels_last where supported, and a step or
  wall-clock budget. Meant for a GPU; it runs on a CPU for small images.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from . import distributed
from .ssl_augment import semi_views
from .embedding import embed_images
from .heads import MultiHeadClassifier, head_probabilities, resolve_hidden_dim
from .image_stream import image_batches
from .losses import fixmatch_loss, semi_loss  # noqa: F401  (fixmatch_loss: re-exported)
from .neighbors import (
    AGREEMENT_NEIGHBORS,
    nearest_neighbors,
    neighbour_agreement,
    reliability_scores,
)
from .runtime import (autocast_dtype, compiled, derived_seed, draw_generator, isolated_rng,
                      on_cuda)

__all__ = ["SEMI_LEARNING_RATES", "DEFAULT_SEMI_STEPS", "CPU_FINETUNE_MU", "default_semi_mode",
           "default_semi_mu", "default_semi_rounds", "SemiSettings", "SemiResult", "default_semi_learning_rate",
           "reliability_neighbors", "reliable_samples", "run_spice_semi", "train_semi_head",
           "finetune"]

#: ``semi_learning_rate="auto"``: Adam for the "head" mode, SGD (FixMatch) for "finetune".
SEMI_LEARNING_RATES = {"head": 1e-3, "finetune": 0.03}


def default_semi_learning_rate(mode):
    """``semi_learning_rate="auto"`` of the ``mode`` ("head" or "finetune")."""
    return SEMI_LEARNING_RATES.get(mode)


#: ``semi_steps="auto"`` without a CPU time budget (FixMatch-style steps of one round).
DEFAULT_SEMI_STEPS = 1000
#: ``semi_mu="auto"`` of the "finetune" mode off CUDA (FixMatch's 7 elsewhere): a step
#: then trains on ``B (1 + 2 mu)`` = 448 images instead of 960, and in the probes of
#: docs/benchmarks.md ("Thirteenth session") 600 steps at mu 3 gained about what 1,000
#: at mu 7 did on USPS, at a third of the work.
CPU_FINETUNE_MU = 3


def default_semi_mode(pretrained, finetune_fits):
    """``semi="auto"``: "finetune" (the paper's SPICE-Semi, backbone and head end to end)
    when this fit pretrained its backbone by SimCLR and there is time for it
    (``finetune_fits``: on CUDA, or on a CPU when the time budget left it enough steps;
    the CPU budget leaves none for colour images under ``semi="auto"``, see
    :func:`~spice_learn.representation.plan_representation`);
    "head" otherwise (a backbone given with its weights, a fitted ``backbone_``,
    precomputed features, a CPU fit without the time budget, colour images on a CPU,
    or a budget too small to finetune in: sklearn's digits on 2 cores).

    Chosen with stage 1 fixed at the epochs a 2-core CPU budget gives, over seeds 0-2
    (docs/benchmarks.md, "Thirteenth session"): after SPICE-Self, 1,000 finetune steps
    raised ACC on USPS by 0.004 / 0.013 / 0.013 and on the Fashion-MNIST subset by
    0.013 / 0.010 / 0.007, where the "head" mode's rounds were undone by its label-free
    check on every seed (forced through, they moved ACC by -0.017 to +0.012). On 5,000
    random-colour shapes with the CPU plan (seeds 0-2, "Sixteenth session") the finetune
    lowered the selected head on every seed (by 0.144 / 0.017 / 0.005), and "head" with
    the whole budget for stage 1 gained 0.225 / 0.110 / 0.015 over it: hence no CPU
    finetune for colour images."""
    return "finetune" if pretrained and finetune_fits else "head"


def default_semi_mu(mode, device):
    """``semi_mu="auto"``: :data:`CPU_FINETUNE_MU` for "finetune" off CUDA, else 7."""
    if mode == "finetune" and not on_cuda(device):
        return CPU_FINETUNE_MU
    return 7


def default_semi_rounds(mode):
    """``semi_rounds="auto"``: 1 for "finetune" (the paper's one round; a second costs
    as much again), 2 for "head" (seconds each)."""
    return 1 if mode == "finetune" else 2


# --------------------------------------------------------------------- reliability
def reliability_neighbors(n_neighbors, n_samples, n_clusters):
    """``n_s``, the neighbours that vote on a sample's reliability.

    "auto" (None) is the paper's 100, but at most a sixth of the average cluster;
    any value is capped below the average cluster size (a larger neighbourhood
    cannot agree with its cluster), and is at least 1. On CIFAR-10 (5,000 images a
    class) 100 neighbours are 2 % of a class; on sklearn digits (180 a class) they
    would be more than half of it, and the sparse classes would get no reliable
    sample at all.
    """
    if n_neighbors is None:
        n_neighbors = min(100, n_samples // (6 * n_clusters))
    return max(1, min(n_neighbors, n_samples // n_clusters - 1))


def reliable_samples(neighbors, labels, threshold):
    """Reliability scores (Eq. 5: share of the ``neighbors`` in the sample's cluster)
    and the mask ``scores >= threshold``; rank 0's scores under torchrun."""
    scores = distributed.broadcast_object(reliability_scores(neighbors, labels))
    return scores, scores >= threshold


def _step(optimizer, logits, labelled_targets, threshold, shares=None):
    """One update with the loss of Eq. 6 on ``logits`` ordered as ``[labelled weak;
    unlabelled weak; unlabelled strong]``; returns (supervised, unlabelled, mask share).

    ``shares`` (under torchrun): this process's share of the labelled and of the
    unlabelled samples of the global batch, times the number of processes
    (``W * n_local / n_global``). The two means are weighted
    by them so that the gradient DistributedDataParallel averages over the
    processes is the gradient of the global batch's loss; the returned
    statistics are those of the global batch."""
    sup, unsup, mask = semi_loss(logits, labelled_targets, threshold)
    optimizer.zero_grad(set_to_none=True)
    w_sup, w_unsup = shares or (1.0, 1.0)  # x * 1.0 == x: one process is unchanged
    (sup * w_sup + unsup * w_unsup).backward()
    optimizer.step()
    stats = torch.stack([sup.detach(), unsup.detach(), mask.float().mean()])
    if shares is not None:
        weights = torch.tensor([shares[0], shares[1], shares[1]], device=stats.device)
        gathered = distributed.all_gather_rows((stats * weights)[None])
        stats = gathered.sum(0) / distributed.world_size()
    return stats


@torch.no_grad()
def _update_ema(ema, model, decay):
    """``ema = decay * ema + (1 - decay) * model`` for parameters and float buffers
    (integer buffers are copied). The caller warms ``decay`` up, as
    ``min(decay, (1 + t) / (10 + t))``, so early weights do not linger."""
    pairs = list(zip(ema.parameters(), model.parameters(), strict=True))
    pairs += list(zip(ema.buffers(), model.buffers(), strict=True))
    for e, p in pairs:
        if e.dtype.is_floating_point:
            e.lerp_(p, 1.0 - decay)
        else:
            e.copy_(p)


def _elapsed(start):
    """Seconds since ``start`` by rank 0's clock (the same decision on every process)."""
    return distributed.broadcast_object(time.perf_counter() - start)


def _cosine_lr(base, step, n_steps, start, max_time):
    progress = step / n_steps
    if max_time:
        progress = max(progress, _elapsed(start) / max_time)
    # FixMatch's schedule: cos(7 pi t / 16) never reaches 0.
    return base * math.cos(7 * math.pi * min(progress, 1.0) / 16)


class _BalancedSampler:
    """Draws reliable samples class-balanced: a cluster uniformly among those
    with reliable samples, then one of its reliable samples uniformly.

    FixMatch's labelled sets are balanced (e.g. 4 labels per CIFAR-10 class);
    reliable samples are not: dense clusters have many, sparse ones a few.
    Drawn uniformly, the sparse clusters hardly appear in the supervised term
    and the consistency term lets the dense ones absorb them; with weak
    features SPICE-Semi then empties clusters.
    """

    def __init__(self, reliable_idx, labels, device="cpu"):
        cluster = torch.as_tensor(np.asarray(labels))[reliable_idx]
        order = torch.argsort(cluster, stable=True)
        self.members = reliable_idx[order].to(device)  # reliable samples grouped by cluster
        _, sizes = torch.unique_consecutive(cluster[order], return_counts=True)
        self.sizes = sizes.to(device)
        self.offsets = self.sizes.cumsum(0) - self.sizes

    def __call__(self, n_draws, gen):
        """``n_draws`` indices, drawn with ``gen`` on its device (the sampler's)."""
        which = torch.randint(len(self.sizes), (n_draws,), generator=gen, device=gen.device)
        size = self.sizes[which]
        pos = (torch.rand(n_draws, generator=gen, dtype=torch.float64, device=gen.device)
               * size).long()
        return self.members[self.offsets[which] + torch.minimum(pos, size - 1)]


def _draw(sampler, n, batch_size, mu, gen):
    labelled = sampler(batch_size, gen)
    unlabelled = torch.randint(n, (mu * batch_size,), generator=gen, device=gen.device)
    return labelled, unlabelled


def _check_reliable(reliable):
    reliable_idx = torch.from_numpy(np.flatnonzero(np.asarray(reliable)))
    if len(reliable_idx) == 0:
        raise ValueError("SPICE-Semi needs at least one reliable sample; got none.")
    return reliable_idx


def train_semi_head(
    cache, labels, reliable, *, n_clusters, hidden_dim, n_steps, batch_size, mu, threshold,
    learning_rate, seed, device, max_time=None, verbose=0,
):
    """SPICE-Semi "head" mode: a fresh classifier on cached view embeddings.

    Parameters
    ----------
    cache : ViewCache
        Embeddings of the original images and their weak and strong views.
    labels : array-like of shape (N,)
        SPICE-Self cluster of every sample (the targets of reliable samples).
    reliable : array-like of shape (N,), bool
        Reliable-sample mask (at least one True).
    n_clusters, hidden_dim : int
    n_steps : int
        Gradient steps (the cosine schedule spans them).
    batch_size : int
        ``B``, reliable samples per step.
    mu : int
        Unlabelled samples per reliable one.
    threshold : float
        ``tau`` of :func:`~spice_learn.losses.fixmatch_loss`.
    learning_rate : float
        Adam learning rate.
    seed : int
    device : torch.device
    max_time : float or None
        Wall-clock budget in seconds.
    verbose : int

    Returns
    -------
    classifier : MultiHeadClassifier
        One head, in eval mode, on ``device``.
    history : ndarray of shape (n_steps_done, 3)
        Per step: supervised loss, unlabelled loss, share of unlabelled samples
        above the threshold.
    """
    cache = cache.to(device)
    n, dim = cache.original.shape
    gen = torch.Generator().manual_seed(seed)
    head = MultiHeadClassifier(1, dim, hidden_dim, n_clusters, generator=gen).to(device).train()
    draws = draw_generator(gen, device, seed, 1)  # the steps' draws, on the device
    sampler = _BalancedSampler(_check_reliable(reliable), labels, device)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, fused=True)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    n_weak, n_strong = cache.weak.shape[0], cache.strong.shape[0]
    history, start = [], time.perf_counter()

    def view(n_views, rows):  # a cached view of each of ``rows``
        return torch.randint(n_views, rows.shape, generator=draws, device=device)

    bar = tqdm(range(n_steps), desc="SPICE-Semi (head)", unit="step", disable=verbose <= 0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(learning_rate, step, n_steps, start, max_time)
        li, ui = _draw(sampler, n, batch_size, mu, draws)
        x = torch.cat([
            cache.weak[view(n_weak, li), li],
            cache.weak[view(n_weak, ui), ui],
            cache.strong[view(n_strong, ui), ui],
        ]).to(device).float()
        logits = head(x)[0]
        history.append(_step(optimizer, logits, targets[li.to(device)], threshold))
        if max_time is not None and _elapsed(start) > max_time:
            break
    bar.close()
    return head.eval(), torch.stack(history).cpu().numpy()


class _Classifier(nn.Module):
    """Backbone, L2 normalisation and a one-head :class:`MultiHeadClassifier`."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(F.normalize(self.backbone(x).flatten(1).float(), dim=1))[0]


def finetune(
    extractor, classifier, images, labels, reliable, *, n_steps, batch_size, mu, threshold,
    learning_rate, ema_decay, flip, seed, device, max_time=None, verbose=0, compile=False,
    recipe=None,
):
    """SPICE-Semi "finetune" mode: backbone and head trained end to end on images.

    Parameters
    ----------
    extractor : FeatureExtractor
        Its module is trained in place (it must be the caller's own copy) and
        ends up holding the EMA weights.
    classifier : MultiHeadClassifier
        One head on L2-normalised features (e.g. the selected SPICE-Self head);
        trained in place, ends up holding the EMA weights.
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W), or ImageStream
        An ImageStream decodes the steps' batches ahead, in its DataLoader.
    labels, reliable : array-like of shape (N,)
        SPICE-Self clusters and the reliable mask.
    n_steps : int
        Gradient steps (the schedule spans them).
    batch_size, mu, threshold : int, int, float
        ``B``, unlabelled ratio and ``tau``.
    learning_rate : float
        SGD (Nesterov momentum 0.9, weight decay 5e-4) learning rate, FixMatch's
        cosine decay.
    ema_decay : float
        Decay of the exponential moving average of the weights (0 = no averaging),
        warmed up as ``min(ema_decay, (1 + t) / (10 + t))`` at step ``t``.
    flip : bool
        Horizontal flips in the augmentations.
    seed : int
    device : torch.device
    max_time : float or None
        Wall-clock budget in seconds.
    verbose : int
    compile : bool
        Run the network through :func:`torch.compile`.
    recipe : dict or None
        ``colour`` and ``invariances`` of stage 1's contrastive views, which the
        strong view repeats (:func:`~spice_learn.ssl_augment.semi_views`); None:
        decided by the input size.

    Under torchrun (``W`` processes) each process trains on its contiguous
    ``1 / W`` of the labelled and of the unlabelled samples of every global
    batch (drawn by the same generator on every process, and augmented by
    another one that is also the same everywhere), in DistributedDataParallel with the global batch's BatchNorm
    statistics and the loss weighting of :func:`_step`: the steps equal those
    of one process up to floating-point rounding. ``batch_size`` must be at
    least ``W``; only rank 0 shows progress.

    Returns
    -------
    history : ndarray of shape (n_steps_done, 3)
        As in :func:`train_semi_head`.
    """
    with isolated_rng(device, seed):
        return _finetune(
            extractor, classifier, images, labels, reliable, n_steps=n_steps,
            batch_size=batch_size, mu=mu, threshold=threshold, learning_rate=learning_rate,
            ema_decay=ema_decay, flip=flip, seed=seed, device=device, max_time=max_time,
            verbose=verbose, compile=compile, recipe=recipe,
        )


def _finetune(
    extractor, classifier, images, labels, reliable, *, n_steps, batch_size, mu, threshold,
    learning_rate, ema_decay, flip, seed, device, max_time, verbose, compile, recipe,
):
    sampler = _BalancedSampler(_check_reliable(reliable), labels)
    model = _Classifier(extractor.module, classifier).to(device)
    model = model.to(memory_format=torch.channels_last).train().requires_grad_(True)
    ema = copy.deepcopy(model).requires_grad_(False)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim <= 1 or "norm" in name or "bn" in name else decay).append(param)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate, momentum=0.9, nesterov=True,
    )
    size = list(extractor.input_size)
    weak, strong = semi_views(size, flip=flip, **(recipe or {}))
    mean = torch.tensor(extractor.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(extractor.std, device=device).view(1, 3, 1, 1)
    amp = autocast_dtype(device, bf16_only=True)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    world = distributed.world_size()
    if batch_size < world:
        raise ValueError(f"batch_size (semi_batch_size) must be at least the number of "
                         f"processes ({world}); got {batch_size}.")
    shards = [distributed.shard_range(batch_size), distributed.shard_range(mu * batch_size)]
    shares = None
    if distributed.is_distributed():
        shares = tuple(world * (hi - lo) / total
                       for (lo, hi), total in zip(shards, (batch_size, mu * batch_size)))
    (l_lo, l_hi), (u_lo, u_hi) = shards
    rows_l, rows_u = (l_lo, l_hi, batch_size), (u_lo, u_hi, mu * batch_size)

    # The steps' samples come from their own generator, so that an ImageStream can
    # decode the batches ahead (its DataLoader) while the augmentations use ``gen``.
    draws = torch.Generator().manual_seed(derived_seed(seed, 1))

    def step_rows():  # this process's labelled and unlabelled rows of each step
        for _ in range(n_steps):
            li, ui = _draw(sampler, n, batch_size, mu, draws)
            yield li[l_lo:l_hi], ui[u_lo:u_hi]

    rows, rows_ahead = itertools.tee(step_rows())
    batches = image_batches(images, (torch.cat(r) for r in rows_ahead),
                            pin_memory=device.type == "cuda")

    def load(x):
        if list(x.shape[-2:]) != size:
            x = TF.resize(x, size, antialias=True)
        return x.to(device, non_blocking=True).float().div_(255)

    history, start = [], time.perf_counter()
    bar = tqdm(range(n_steps), desc="SPICE-Semi (finetune)", unit="step",
               disable=verbose <= 0 or not distributed.is_main_process())
    try:
        with distributed.synced_batchnorm(model, device) as synced:
            net = compiled(distributed.wrap_ddp(synced, device), compile)
            for step in bar:
                for group in optimizer.param_groups:
                    group["lr"] = _cosine_lr(learning_rate, step, n_steps, start, max_time)
                li, ui = next(rows)
                x = load(next(batches))
                xl, xu = x[: len(li)], x[len(li) :]
                x = torch.cat([weak(xl, gen, rows_l), weak(xu, gen, rows_u),
                               strong(xu, gen, rows_u)])
                x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = net(x).float()
                history.append(_step(optimizer, logits, targets[li].to(device), threshold, shares))
                _update_ema(ema, model, min(ema_decay, (1 + step) / (10 + step)))
                if verbose > 0 and step % 20 == 0:
                    bar.set_postfix(sup=f"{float(history[-1][0]):.3f}",
                                    mask=f"{float(history[-1][2]):.2f}")
                if max_time is not None and _elapsed(start) > max_time:
                    break
    finally:  # an ImageStream's DataLoader workers stop here, even on errors
        batches.close()
    bar.close()
    del net  # the DDP wrapper, before the model is handed on
    if ema_decay > 0:
        model.load_state_dict(ema.state_dict())
    model.eval().requires_grad_(False)
    return torch.stack(history).cpu().numpy()


# --------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class SemiSettings:
    """How SPICE-Semi runs: ``mode`` ("head" or "finetune"), ``n_neighbors`` (``n_s``,
    resolved by :func:`reliability_neighbors`), ``reliability_threshold``
    (``tau_c``), ``threshold`` (``tau``), ``steps`` and ``rounds``, ``max_time`` per
    round, ``batch_size`` (``B``), ``mu``, ``learning_rate``, ``ema_decay``,
    ``hidden_dim`` of the "head" classifier (as
    :func:`~spice_learn.heads.resolve_hidden_dim` reads it), the
    embedding's ``embed_batch_size`` and ``compile`` ("finetune" embeds again), and
    ``check_agreement``: in the "head" mode, undo a round whose clustering fills as
    many clusters as the one it started from but agrees less with the neighbour
    graph."""

    mode: str = "head"
    n_neighbors: int = 10
    reliability_threshold: float = 0.95
    threshold: float = 0.95
    steps: int = 1000
    rounds: int = 2
    max_time: float | None = None
    batch_size: int = 64
    mu: int = 7
    learning_rate: float = 1e-3
    ema_decay: float = 0.999
    hidden_dim: int | str | None = "auto"
    embed_batch_size: int = 256
    compile: bool = False
    check_agreement: bool = True


@dataclass(frozen=True)
class SemiResult:
    """Result of :func:`run_spice_semi`: the ``classifier`` and the ``features`` it
    was trained for, the ``reliability`` scores and ``reliable`` mask at the start
    of the last kept round (of round 1 when none was kept), the steps' ``history``
    of the kept rounds (None when none was kept), and the number of kept ``rounds``."""

    classifier: MultiHeadClassifier
    features: torch.Tensor
    reliability: np.ndarray
    reliable: np.ndarray
    history: np.ndarray | None
    rounds: int = 0


def run_spice_semi(cache, features, classifier, labels, neighbors, settings, *, seed, device,
                   extractor=None, images=None, flip=False, recipe=None, verbose=0, log=None):
    """SPICE-Semi rounds after SPICE-Self.

    Each round scores every sample's reliability against the current clusters
    (:func:`reliable_samples`), refines the classifier on the reliable ones and
    hands its clusters to the next round (self-training: a fresh classifier in the
    "head" mode; the same backbone and classifier go on in "finetune";
    ``benchmarks/run_semi_rounds.py`` compares 1 and 2 rounds). Label-free checks
    end SPICE-Semi:

    * a round without reliable samples is skipped, with a warning;
    * a round that leaves a non-empty cluster empty is undone, with a warning
      (``n_clusters`` is the user's choice);
    * in the "head" mode (``settings.check_agreement``), a round whose clustering
      fills as many clusters as the one it started from but shares fewer pairs of
      the :data:`~spice_learn.neighbors.AGREEMENT_NEIGHBORS` nearest neighbours
      (:func:`~spice_learn.neighbors.neighbour_agreement`) is undone (logged); one
      that fills more is kept (merging clusters only raises the agreement, so
      fewer clusters would always win). The classifier is trained on augmented
      views and can draw boundaries that the original embeddings' neighbourhoods
      do not support. The "finetune" mode changes the embedding itself, so the
      old graph cannot judge it.

    Parameters
    ----------
    cache : ViewCache
    features : torch.Tensor of shape (N, D)
        Original embeddings (the cache's original view).
    classifier : MultiHeadClassifier
        The selected SPICE-Self head ("finetune" trains it in place).
    labels : ndarray of shape (N,)
        SPICE-Self clusters.
    neighbors : torch.Tensor of shape (N, n) or None
        Neighbours sorted by similarity, ``n >= settings.n_neighbors`` (None: searched
        here); the agreement check uses the first ``min(n, AGREEMENT_NEIGHBORS)``.
    settings : SemiSettings
    seed : int
        Round ``r`` uses ``seed + r``.
    device : torch.device
    extractor, images, flip, recipe
        "finetune" only: the backbone (trained in place), the images, the flip setting
        and stage 1's view recipe (see :func:`finetune`).
    verbose : int
    log : callable or None
        Called with one line per kept round and per round undone by the agreement
        check.

    Returns
    -------
    SemiResult
    """
    n_s, s = settings.n_neighbors, settings
    graph = agreement = None  # "head": the graph that judges the rounds, and the agreement
    if s.mode == "head" and s.check_agreement:
        if neighbors is None:  # the features stay fixed: one search serves every round
            n_search = min(max(n_s, AGREEMENT_NEIGHBORS), features.shape[0] - 1)
            neighbors = nearest_neighbors(features, n_search, device=device)
        graph = torch.as_tensor(neighbors[:, :AGREEMENT_NEIGHBORS]).cpu()  # all, when fewer
        n_agree = graph.shape[1]
        agreement = neighbour_agreement(labels, graph, n_agree)
    if neighbors is not None:  # searched before (sorted by similarity): keep the n_s nearest
        neighbors = neighbors[:, :n_s]
    reliability = reliable = None
    histories = []
    for round_ in range(s.rounds):
        kept = ("the SPICE-Self clustering is kept" if round_ == 0 else
                f"the clustering of round {round_} is kept")
        if neighbors is None:
            neighbors = nearest_neighbors(features, n_s, device=device)
        scores, mask = reliable_samples(neighbors, labels, s.reliability_threshold)
        if round_ == 0:  # reported even when the round is not used
            reliability, reliable = scores, mask
        if not mask.any():
            warnings.warn(
                f"SPICE-Semi round {round_ + 1}: no sample has a reliability of at least "
                f"reliability_threshold={s.reliability_threshold} among its {n_s} "
                f"neighbours; {kept}.", UserWarning, stacklevel=4,
            )
            break
        saved = None
        if s.mode == "finetune":  # trained in place: keep a copy to go back to
            saved = [{name: v.clone() for name, v in m.state_dict().items()}
                     for m in (extractor.module, classifier)]
        new_classifier, history = _refine(cache, classifier, labels, mask, s, seed + round_,
                                          device, extractor, images, flip, recipe, verbose)
        new_features = features
        if saved is not None:  # the backbone changed: embed again, search again
            new_features = embed_images(extractor, images, batch_size=s.embed_batch_size,
                                        device=device, verbose=verbose, compile=s.compile)
            neighbors = None  # (an undone round ends the loop, so this is never stale)
        new_labels = distributed.broadcast_object(
            head_probabilities(new_classifier, new_features)[0].argmax(dim=1).cpu().numpy())
        before, after = len(np.unique(labels)), len(np.unique(new_labels))
        if after < before:  # a label-free sign that the round went wrong
            warnings.warn(
                f"SPICE-Semi round {round_ + 1} emptied {before - after} of the {before} "
                f"clusters it started from; {kept}.", UserWarning, stacklevel=4,
            )
            if saved is not None:
                extractor.module.load_state_dict(saved[0])
                classifier.load_state_dict(saved[1])
            break
        if graph is not None:
            new_agreement = neighbour_agreement(new_labels, graph, n_agree)
            # Filling more clusters lowers the agreement (merging only raises it), so
            # only rounds that fill as many are compared. Rank 0 decides: the
            # processes' graphs may differ in near-ties.
            if distributed.broadcast_object(after == before and new_agreement < agreement):
                if log is not None:
                    log(f"SPICE-Semi ({s.mode}) round {round_ + 1} undone: its clusters share "
                        f"{new_agreement:.2%} of {n_agree}-neighbour pairs, fewer than the "
                        f"{agreement:.2%} it started from; {kept}")
                break
            agreement = new_agreement
        if log is not None:
            log(f"SPICE-Semi ({s.mode}) round {round_ + 1}: {mask.mean():.1%} "
                f"reliable samples ({n_s} neighbours), {len(history)} steps, "
                f"{(new_labels != labels).mean():.1%} of the labels changed")
        classifier, features, labels = new_classifier, new_features, new_labels
        reliability, reliable = scores, mask
        histories.append(history)
    history = np.concatenate(histories) if histories else None
    return SemiResult(classifier, features, reliability, reliable, history, len(histories))


def _refine(cache, classifier, labels, reliable, s, seed, device, extractor, images, flip,
            recipe, verbose):
    """One SPICE-Semi round's training: the refined one-head classifier and its history.

    Under torchrun the "head" mode runs in every process on the same cache and
    seed, and rank 0's result is broadcast (GPUs need not compute bit-identical
    results); "finetune" is trained in DistributedDataParallel.
    """
    common = dict(n_steps=s.steps, batch_size=s.batch_size, mu=s.mu, threshold=s.threshold,
                  learning_rate=s.learning_rate, seed=seed, device=device,
                  max_time=s.max_time, verbose=verbose)
    if s.mode == "head":
        head, history = train_semi_head(
            cache, labels, reliable, n_clusters=classifier.n_clusters,
            hidden_dim=resolve_hidden_dim(s.hidden_dim, cache.original.shape[1]), **common)
        return distributed.broadcast_module(head), history
    history = finetune(extractor, classifier, images, labels, reliable, ema_decay=s.ema_decay,
                       flip=flip, compile=s.compile, recipe=recipe, **common)
    return classifier, history
