"""Stage 1: self-supervised contrastive pretraining on the images to cluster.

We use SimCLR (Chen et al. 2020): two augmented views of each image, a projection
MLP, and the NT-Xent loss over the ``2B`` views of a batch. Why SimCLR rather than
the MoCo v2 of the paper:

* it has no queue and no momentum encoder, so it works on data sets smaller than
  MoCo's 65,536-key queue (the SPICE issues report stale keys and collapse with
  queues larger than the data) and needs one network in memory, not two;
* at the batch sizes a CPU can afford it trains well: the lightly benchmark on
  CIFAR-10 reaches about the same kNN accuracy with SimCLR and MoCo at batch 512
  (84.8 % vs 84.7 %, 200 epochs), and SimCLR was faster; on a CPU's budget of a
  few dozen epochs, batches of 64-128 (more steps for the same time) did better
  here still (:func:`~spice_learn.representation.default_simclr_settings`);
* one forward/backward path keeps the code short and deterministic on the CPU.

MoCo v2 can be added later as another ``pretrain`` method behind the same
function signature. Augmentations come from :mod:`spice_learn.ssl_augment`,
fitted to the input size (the SimCLR CIFAR recipe from 32 px, a gentler digit
recipe below 20 px).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from . import distributed
from .ssl_augment import contrastive_augment
from .disk_cache import atomic_path
from .disk_cache import fingerprint as run_fingerprint
from .image_stream import image_batches
from .losses import nt_xent_loss
from .runtime import (autocast_dtype, compiled, derived_seed, draw_generator, halve_after_oom,
                      isolated_rng)

__all__ = ["ProjectionHead", "pretrain_simclr", "simclr_speed", "steps_per_epoch"]


def contrastive_loss(net, views, temperature):
    """NT-Xent (:func:`~spice_learn.losses.nt_xent_loss`) of the global batch, from
    this process's rows of the two views: the network pass and the gathering;
    the loss itself is in :mod:`spice_learn.losses`.

    Parameters
    ----------
    net : torch.nn.Module
        Backbone and projection head (possibly wrapped in DistributedDataParallel).
    views : list of two torch.Tensor of shape (b, 3, H, W)
        This process's rows of the two augmented views of the global batch.
    temperature : float

    Under torchrun the projections of all processes are gathered (gradients
    flow back to their owners) and every process computes the same loss over
    the whole global batch, so the gradient DistributedDataParallel averages is
    the one-process gradient (see :mod:`spice_learn.distributed`).
    """
    z = net(torch.cat(views))
    n = views[0].shape[0]
    z1, z2 = distributed.gather_with_grad(z[:n]), distributed.gather_with_grad(z[n:])
    with torch.autocast(z.device.type, enabled=False):  # the loss in float32
        return nt_xent_loss(z1, z2, temperature)


class SimCLRNet(nn.Module):
    """Backbone followed by the projection head (one module for DDP to wrap)."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x).flatten(1))


class ProjectionHead(nn.Sequential):
    """SimCLR projection MLP: Linear(D, D), BatchNorm, ReLU, Linear(D, P)."""

    def __init__(self, in_dim, out_dim):
        super().__init__(
            nn.Linear(in_dim, in_dim, bias=False), nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True),
            nn.Linear(in_dim, out_dim),
        )


def pretrain_simclr(
    extractor, images, *, max_epochs, max_time, batch_size, learning_rate, temperature,
    projection_dim, flip, seed, device, verbose=0, checkpoint_dir=None, compile=False,
    augment=None,
):
    """Train ``extractor.module`` in place with SimCLR on ``images``.

    Parameters
    ----------
    extractor : FeatureExtractor
        Its module is trained (it must be the caller's own copy).
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W), or ImageStream
    max_epochs : int
        Upper bound on passes over the data; the cosine learning-rate schedule
        spans this many epochs.
    max_time : float or None
        Wall-clock budget in seconds; training stops after the step that
        exceeds it, and the cosine schedule follows elapsed time when that runs
        out before the epochs do (so results then depend on the machine's speed).
    batch_size : int
        Images per step (each gives two views); clipped to ``N``.
    learning_rate : float
        Peak AdamW learning rate (weight decay 1e-4), cosine decay to 0.
    temperature : float
        NT-Xent temperature.
    projection_dim : int
        Output size of the projection head.
    flip : bool
        Allow horizontal flips (only for inputs above 20 px).
    seed : int
    device : torch.device
    verbose : int
        Progress bar with the loss per epoch when > 0.
    checkpoint_dir : path-like or None
        Folder to save the training state to after every epoch, in a file
        ``pretrain-<fingerprint>.pt`` named after a digest of the images, the
        starting weights, the settings and the seed; a run with the same
        fingerprint resumes from it. On the CPU without a time budget a resumed
        run ends with exactly the weights of an uninterrupted one.
    compile : bool
        Run the network through :func:`torch.compile`.
    augment : BatchAugment or None
        The augmentation of both views; None: :func:`~spice_learn.ssl_augment.contrastive_augment`
        for the extractor's input size and ``flip``.

    On a CUDA out-of-memory error in the forward or backward pass the batch is
    halved and the step is taken again (with a warning); under torchrun the
    error is raised instead (the processes would have to agree on the new
    size). One in ``optimizer.step()``, which may have updated some parameters
    already, is raised.

    Under torchrun (an initialised process group of ``W`` processes) each
    process trains on its contiguous ``1 / W`` of every global batch of
    ``batch_size`` images: the permutation, the augmentation parameters (drawn
    for the whole batch on every process, see
    :class:`~spice_learn.ssl_augment.BatchAugment`), the steps and the
    learning-rate schedule are those of one process, BatchNorm layers use the
    statistics of the global batch (:func:`~spice_learn.distributed.synced_batchnorm`)
    and the loss is NT-Xent over the gathered batch (:func:`contrastive_loss`),
    so the result equals a one-process run up to floating-point rounding. With a
    time budget, rank 0's clock decides; only rank 0 shows progress and writes
    checkpoints, and rank 0 reads the checkpoint to resume from and sends it to
    the other processes.

    Returns
    -------
    history : list of float
        Mean NT-Xent loss of each completed epoch.
    """
    with isolated_rng(device, seed):
        return _pretrain_simclr(
            extractor, images, max_epochs=max_epochs, max_time=max_time,
            batch_size=batch_size, learning_rate=learning_rate, temperature=temperature,
            projection_dim=projection_dim, flip=flip, seed=seed, device=device,
            verbose=verbose, checkpoint_dir=checkpoint_dir, compile=compile, augment=augment,
        )


def _pretrain_simclr(
    extractor, images, *, max_epochs, max_time, batch_size, learning_rate, temperature,
    projection_dim, flip, seed, device, verbose, checkpoint_dir, compile, augment,
):
    module, head, optimizer = _training_parts(extractor, extractor.module, projection_dim,
                                              learning_rate, device)  # RNG: isolated_rng
    gen = torch.Generator().manual_seed(seed)  # the epochs' orders
    aug_gen = draw_generator(gen, device, seed, 1)  # the views (gen itself on the CPU)
    size = list(extractor.input_size)
    if augment is None:
        augment = contrastive_augment(size, flip=flip)
    mean, std, amp = _input_statistics(extractor, device)
    n = images.shape[0]
    batch = min(batch_size, n)
    _check_batch(batch)
    history, spent, checkpoint, fingerprint = [], 0.0, None, None
    if checkpoint_dir is not None:
        fingerprint = run_fingerprint(images, extractor, max_epochs, max_time, batch_size,
                                      learning_rate, temperature, projection_dim, flip, seed,
                                      repr(augment))
        checkpoint = Path(checkpoint_dir) / f"pretrain-{fingerprint[:20]}.pt"
        # Rank 0 reads the checkpoint and every process resumes from its copy (processes
        # that look for the file themselves could resume at different epochs).
        state = distributed.broadcast_object(
            _load_checkpoint(checkpoint, fingerprint) if distributed.is_main_process()
            else None)
        if state is not None:
            module.load_state_dict(state["module"])
            head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            if aug_gen is not gen and "augment_generator" in state:
                aug_gen.set_state(state["augment_generator"])
            elif aug_gen is not gen:  # saved on the CPU: a stream of the resumed epochs' own
                aug_gen.manual_seed(derived_seed(derived_seed(seed, 1), len(state["history"])))
            history, spent, batch = list(state["history"]), float(state["spent"]), state["batch"]
            _check_batch(batch, " (restored from the checkpoint)")
            del state
    start = time.perf_counter() - spent

    def elapsed():  # rank 0's clock, so that every process takes the same decisions
        return distributed.broadcast_object(time.perf_counter() - start)

    main = distributed.is_main_process()
    bar = tqdm(range(max_epochs), desc="pretraining (SimCLR)", unit="epoch",
               disable=verbose <= 0 or not main, initial=len(history))
    with distributed.synced_batchnorm(SimCLRNet(module, head), device) as synced:
        net = compiled(distributed.wrap_ddp(synced, device), compile)
        _train_epochs(
            net, optimizer, images, gen, aug_gen, augment, mean, std, amp, device, history, bar,
            elapsed=elapsed, batch=batch, size=size, max_epochs=max_epochs, max_time=max_time,
            learning_rate=learning_rate, temperature=temperature, verbose=verbose,
            checkpoint=checkpoint if main else None,
            checkpoint_state=lambda: {
                "fingerprint": fingerprint, "module": module.state_dict(),
                "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": gen.get_state(), "history": history,
                # CUDA only (on the CPU gen draws the views too)
                **({"augment_generator": aug_gen.get_state()} if aug_gen is not gen else {}),
                "spent": time.perf_counter() - start,
            },
        )
    bar.close()
    del net  # the DDP wrapper (its hooks and buffers) before the module is handed on
    module.eval().requires_grad_(False)
    return history


def steps_per_epoch(n_samples, batch_size):
    """SimCLR steps in one epoch of ``n_samples`` images: whole batches of
    ``batch_size`` (clipped to ``n_samples``; the last partial batch is dropped), at
    least one."""
    return max(1, n_samples // min(batch_size, n_samples))


def _check_batch(batch, where=""):
    world = distributed.world_size()
    if batch < world:
        raise ValueError(f"batch_size (pretrain_batch_size) must be at least the number of "
                         f"processes ({world}); got {batch} images per step{where}.")


def _load_checkpoint(path, fingerprint):
    """The state saved in ``path`` for the run ``fingerprint``, or None."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if state.get("fingerprint") == fingerprint else None


def _train_epochs(
    net, optimizer, images, gen, aug_gen, augment, mean, std, amp, device, history, bar, *,
    elapsed, batch, size, max_epochs, max_time, learning_rate, temperature, verbose, checkpoint,
    checkpoint_state,
):
    """The epochs of :func:`pretrain_simclr` from ``len(history)`` on; appends to
    ``history`` and saves ``checkpoint_state()`` (plus the batch) after each epoch."""
    n = images.shape[0]
    for epoch in range(len(history), max_epochs):
        if history and max_time is not None and elapsed() > max_time:
            break  # a resumed run whose budget is spent (a fresh run does one step at least)
        perm = torch.randperm(n, generator=gen)
        losses, b, reader = [], 0, None
        try:
            while b < (steps := steps_per_epoch(n, batch)):  # batch halves after an OOM
                progress = (epoch + b / steps) / max_epochs
                if max_time:  # None or 0: no time-based schedule
                    # With a time budget the schedule follows whichever runs out first.
                    progress = max(progress, elapsed() / max_time)
                lr = 0.5 * learning_rate * (1 + math.cos(math.pi * min(progress, 1.0)))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if reader is None:  # this process's rows of the epoch's batches, from batch b on
                    reader = _epoch_batches(images, perm, b, batch, pin=device.type == "cuda")
                lo, hi, n_idx, x = next(reader)
                if list(x.shape[-2:]) != size:  # per batch: never a resized copy of all images
                    x = TF.resize(x, size, antialias=True)
                out_of_memory = False
                try:  # forward and backward only: no parameter has changed yet when they fail
                    x = x.to(device, non_blocking=True).float().div_(255)
                    views = _two_views(x, augment, aug_gen, (lo, hi, n_idx), mean, std)
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        loss = contrastive_loss(net, views, temperature)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                except torch.cuda.OutOfMemoryError:
                    if batch <= 2 or distributed.is_distributed():
                        raise
                    out_of_memory = True
                if out_of_memory:  # outside the handler, so the failed step's tensors are freed
                    optimizer.zero_grad(set_to_none=True)
                    x = views = loss = None
                    position = b * batch
                    batch = halve_after_oom(batch, device, "pretraining")
                    b = position // batch  # the same place in the epoch, in smaller steps
                    reader = None
                    continue
                # Not retried: an error here may leave the weights partly updated.
                optimizer.step()
                losses.append(loss.detach())
                b += 1
                if max_time is not None and elapsed() > max_time:
                    break
        finally:  # an ImageStream's DataLoader workers stop here, even on errors
            if reader is not None:
                reader.close()
        history.append(float(torch.stack(losses).mean()))
        bar.update(1)
        if verbose > 0:
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {**checkpoint_state(), "batch": batch})


def _training_parts(extractor, module, projection_dim, learning_rate, device):
    """``module, head, optimizer`` of a SimCLR run, set up alike for training and
    for :func:`simclr_speed`: ``module`` moved to ``device`` in place, in train mode
    with gradients and channels_last; a new :class:`ProjectionHead` (its weights
    drawn from the global RNG); AdamW over both (weight decay 1e-4)."""
    module = module.to(device).train().requires_grad_(True)
    module = module.to(memory_format=torch.channels_last)
    head = ProjectionHead(extractor.feature_dim, projection_dim).to(device)
    params = list(module.parameters()) + list(head.parameters())
    return module, head, torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-4)


def _input_statistics(extractor, device):
    """``mean, std`` of the extractor's input normalisation, shaped ``(1, 3, 1, 1)`` on
    ``device``, and the autocast type of training there (None: float32)."""
    mean = torch.tensor(extractor.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(extractor.std, device=device).view(1, 3, 1, 1)
    return mean, std, autocast_dtype(device, bf16_only=True)


def _two_views(x, augment, gen, rows, mean, std):
    """Two augmented, normalised, channels_last views of the float batch ``x`` in [0, 1]
    (``rows``: this process's share of the global batch, see
    :class:`~spice_learn.ssl_augment.BatchAugment`)."""
    return [((augment(x, gen, rows=rows) - mean) / std)
            .contiguous(memory_format=torch.channels_last) for _ in range(2)]


def _epoch_batches(images, perm, first, batch, *, pin):
    """``(lo, hi, len(idx), images[idx[lo:hi]])`` for the batches ``idx`` of ``perm``
    from batch ``first`` on, where ``lo:hi`` is this process's share of ``idx``; an
    ImageStream decodes them ahead, in its DataLoader."""
    shares = []
    for b in range(first, steps_per_epoch(len(perm), batch)):
        idx = perm[b * batch : (b + 1) * batch]
        lo, hi = distributed.shard_range(len(idx))
        shares.append((lo, hi, len(idx), idx[lo:hi]))
    for (lo, hi, n_idx, _), x in zip(shares, image_batches(images, (s[3] for s in shares),
                                                           pin_memory=pin)):
        yield lo, hi, n_idx, x


def _save_checkpoint(path, state):
    """Write ``state`` atomically (a crash mid-write never leaves a broken file)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def simclr_speed(extractor, images, *, batch_size, augment, device, steps=4, min_time=1.0):
    """Contrastive views per second that :func:`pretrain_simclr` trains ``extractor``
    on here and now, measured on a copy (the extractor, its weights and the
    caller's RNG are left as they were).

    Two warm-up steps, then timed steps on the first ``batch_size`` images with the
    real augmentation, network, projection head, loss and AdamW update, in the same
    precision and memory format, until ``steps`` of them and ``min_time`` seconds
    are done; the speed is that of the median step. Single steps on a shared
    2-core machine vary by 20 % or more: the mean of two steps after one warm-up
    step ranged over 619-1,153 views/s in three fits on the same idle machine, the
    median after two warm-up steps over 1,081-1,238 in six measurements (batch 256;
    at batch 64 it read 1,006-1,354 in three fits; beside 3 epochs of the real loop on
    the digits it read 1,317 and 1,290 where the loop trained at 1,321 and 1,343).
    About 1-3 seconds for ``spice_convnet4`` at 16 px on 2 cores without fast
    bfloat16; decoding is not timed (the first batch is read once), so images decoded
    from files on every epoch train more slowly than measured. Under torchrun rank 0
    measures alone (processes sharing CPU cores would slow each other down) and every
    process gets its number, so that all take the same decisions from it.

    Parameters
    ----------
    extractor : FeatureExtractor
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W), or ImageStream
    batch_size : int
        Images per step (each gives two views); clipped to ``N``.
    augment : BatchAugment
    device : torch.device
    steps : int, default=4
        The fewest timed steps.
    min_time : float, default=1.0
        The fewest seconds of timed steps.

    Returns
    -------
    float
    """
    speed = None
    if distributed.is_main_process():
        speed = _timed_steps(extractor, images, batch_size, augment, device, steps, min_time)
    return float(distributed.broadcast_object(speed))


def _timed_steps(extractor, images, batch_size, augment, device, steps, min_time):
    with isolated_rng(device, 0):
        module, head, optimizer = _training_parts(
            extractor, copy.deepcopy(extractor.module), 128, 1e-4, device)
        net = SimCLRNet(module, head)
        batch = min(batch_size, images.shape[0])
        x = images[:batch]
        if list(x.shape[-2:]) != list(extractor.input_size):
            x = TF.resize(x, list(extractor.input_size), antialias=True)
        x = x.to(device).float().div_(255)
        mean, std, amp = _input_statistics(extractor, device)
        gen = torch.Generator().manual_seed(0)
        seconds = []
        while len(seconds) < steps + 2 or sum(seconds[2:]) < min_time:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            views = _two_views(x, augment, gen, (0, batch, batch), mean, std)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                z = net(torch.cat(views))
            with torch.autocast(device.type, enabled=False):
                loss = nt_xent_loss(z[:batch].float(), z[batch:].float(), 0.5)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return 2 * batch / float(np.median(seconds[2:]))
