"""Stage 1 as one step: plan the backbone for the images and the machine, build it,
pretrain it when asked.

Shared by :class:`~spice_learn.SpiceClustering` and
:class:`~spice_learn.ImageEmbedder`, so both choose, build and pretrain
backbones the same way.

The CPU plan (``backbone="auto"``, ``pretrain_epochs="auto"``): a CPU trains a small
network on small inputs many times faster than a ResNet-18 on full-size images, and
within minutes the number of contrastive steps matters more than the last bit of
resolution. So on a CPU ``"auto"`` always picks the
four-layer ``spice_convnet4`` and feeds it a working resolution of
:data:`GRAY_INPUT_SIZE` px for grayscale images (larger ones are downsampled, smaller ones
upsampled) and, for colour images, their own side clipped to 16-:data:`COLOUR_INPUT_SIZE`
px (a 32-px photo is seen at 24 px, an 8-px icon at 16), whatever the device and
whether ``"spice_convnet4"`` was named or chosen. Inputs above 20 px are also flipped
(``flip="auto"``), so colour images of 21 px and more get flips. On
CUDA the GPU defaults stay: ``spice_convnet4`` up to 28 px, a ResNet-18 above.
The number of SimCLR epochs follows the number of images
(:func:`default_pretrain_epochs`). On a CPU it is also held to a time budget
(``pretrain_time="auto"``, :func:`cpu_pretrain_budget`): a few training steps are
timed before the plan is made (:func:`~spice_learn.pretrain.simclr_speed`), and the
epochs are cut to what fits the budget at the measured speed, so that a processor
without fast bfloat16 (AVX2 only: about a fifth of the development machine's speed)
gets a fit of about the same length rather than one five times as long.
:func:`estimate_seconds` turns the plan into a time estimate that the estimator
prints at ``verbose >= 1``.
On any device, what the contrastive views teach the network to ignore beyond the
basics (colour, polarity) is tested on the images without labels
(``invariances="auto"``, :mod:`spice_learn.invariances`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from . import distributed
from .backbones import FeatureExtractor, build_backbone
from .invariances import detect_invariances
from .ssl_augment import TINY_INPUT_SIZE, contrastive_augment
from .pretrain import pretrain_simclr, simclr_speed, steps_per_epoch
from .runtime import on_cuda

__all__ = ["SMALL_BACKBONE", "DEFAULT_BACKBONE", "SMALL_BACKBONE_MAX_SIZE", "GRAY_INPUT_SIZE",
           "COLOUR_INPUT_SIZE", "COLOUR_EPOCH_FACTOR", "PIXEL_COST_EXPONENT", "Stage1Plan",
           "MIN_PRETRAIN_STEPS", "MIN_BUDGET_EPOCHS", "BUDGET_SLACK", "SEMI_BUDGET_SHARE",
           "MIN_FINETUNE_STEPS", "GRAY_BUDGET_CAP", "cpu_pretrain_budget",
           "resolve_backbone", "wants_pretraining", "resolve_flip", "is_colour",
           "default_pretrain_epochs",
           "default_simclr_settings", "plan_representation", "estimate_seconds",
           "learn_representation", "Stage1Settings", "Representation", "plan_summary",
           "plan_stage1", "represent"]

#: ``backbone="auto"`` on CUDA: the small conv net for images up to this size, else a ResNet-18.
SMALL_BACKBONE, SMALL_BACKBONE_MAX_SIZE, DEFAULT_BACKBONE = "spice_convnet4", 28, "resnet18"
#: Working resolution of ``spice_convnet4`` for grayscale images, and the largest one
#: for colour images (smaller colour images keep their side, but at least 16 px).
GRAY_INPUT_SIZE, COLOUR_INPUT_SIZE = 16, 24
#: Contrastive views per second that ``spice_convnet4`` trains on at 16 px, and images
#: per second it embeds with a cached view's augmentation, on 2 idle cores (measured
#: with bf16 autocast on the development machine). Time grows more slowly than the pixel
#: count: :data:`PIXEL_COST_EXPONENT`.
TRAIN_VIEWS_PER_SECOND_16PX, EMBED_IMAGES_PER_SECOND_16PX = 5_500, 4_000
#: Stage-1 time scales as ``(pixels / 16**2) ** PIXEL_COST_EXPONENT``: moving colour images
#: from 16 to 24 px (2.25 times the pixels) made whole fits 1.7-1.9 times as long.
PIXEL_COST_EXPONENT = 0.8
#: ``pretrain_epochs="auto"`` on the CPU: colour images get this many times
#: ``40 * sqrt(10,000 / N)`` epochs (:func:`default_pretrain_epochs`); chosen on
#: random-colour shapes, and the CIFAR-10 rows ran with it too.
COLOUR_EPOCH_FACTOR = 2.5
#: The fewest SimCLR steps ``pretrain_epochs="auto"`` gives a small data set
#: (:func:`default_pretrain_epochs`).
MIN_PRETRAIN_STEPS = 600
#: The fewest SimCLR epochs that the CPU time budget cuts ``pretrain_epochs="auto"`` to.
MIN_BUDGET_EPOCHS = 5
#: The largest CPU time budget of :func:`cpu_pretrain_budget` for grayscale images, in
#: seconds: MNIST's 70,000 then keep about 15 minutes of their 40-minute bound for the
#: views and heads of a slow processor.
GRAY_BUDGET_CAP = 1_500.0
#: The budget cuts the rule's epochs only when fewer than this share of them fit: the
#: measured speed varies by 10-20 % from fit to fit, and a fast machine near its
#: budget should keep the epochs its rows were measured with.
BUDGET_SLACK = 0.8
#: Share of the CPU budget (:func:`cpu_pretrain_budget`) that stage 1 leaves to
#: SPICE-Semi's "finetune" mode when that share buys :data:`MIN_FINETUNE_STEPS` steps.
SEMI_BUDGET_SHARE = 0.2
#: The fewest "finetune" steps worth reserving time for: with fewer, the probes of
#: docs/benchmarks.md ("Thirteenth session") gained nothing reliable over SPICE-Self.
MIN_FINETUNE_STEPS = 200


@dataclass(frozen=True)
class Stage1Plan:
    """What stage 1 will do, resolved from the data and the device before it starts.

    Attributes
    ----------
    backbone : str
        Model name (or the class name of a user module).
    input_size : tuple of int
        ``(H, W)`` the network sees.
    colour : bool
        Whether the images have colour (then the contrastive views jitter their colours).
    pretrain_epochs : int
        SimCLR epochs (0: no pretraining).
    batch_size, learning_rate, temperature
        SimCLR settings (the given ones, or :func:`default_simclr_settings`).
    invariances : tuple of str
        The optional invariances the contrastive views teach (the given ones, or
        those :func:`~spice_learn.invariances.detect_invariances` found; see
        :func:`~spice_learn.ssl_augment.contrastive_augment`).
    invariance_scores : dict
        The test's accuracy per transformation (empty when nothing was tested).
    time_budget : float or None
        Seconds of pretraining the epochs were fitted to (``pretrain_time="auto"`` on
        a CPU, :func:`cpu_pretrain_budget`); None when no budget applied.
    views_per_second : float or None
        Contrastive views per second measured before planning
        (:func:`~spice_learn.pretrain.simclr_speed`); None when not measured.
    finetune_steps : int or None
        SPICE-Semi "finetune" steps that the time left to it fits (a budget and a
        ``finetune_step_views`` given, and at least :data:`MIN_FINETUNE_STEPS`);
        None when no time was left to it.
    """

    backbone: str
    input_size: tuple
    colour: bool
    pretrain_epochs: int
    batch_size: int
    learning_rate: float
    temperature: float
    invariances: tuple = ()
    invariance_scores: dict = field(default_factory=dict)
    time_budget: float | None = None
    views_per_second: float | None = None
    finetune_steps: int | None = None


def cpu_pretrain_budget(n_samples, colour):
    """``pretrain_time="auto"`` on a CPU: seconds of SimCLR for ``n_samples`` images.

    Grayscale images: ``60 * (N / 1,800) ** 0.85`` up to 1,800 images, at least 30,
    and ``60 * (N / 1,800) ** 1.2`` above, at most :data:`GRAY_BUDGET_CAP` (1 minute
    for sklearn's digits, 7.2 for USPS's 9,298, 10.4 for 12,669 Fashion-MNIST images,
    25 from about 26,000 on, MNIST's 70,000 included). Colour images: 3.5 times
    ``60 * (N / 1,800) ** 0.85``, at least 105 s (3.8 minutes for 2,000, 15 for
    10,000): they need more epochs (:func:`default_pretrain_epochs`) and larger
    inputs. Under about 800 images the floor holds: there the heads and the views
    cost more than the pretraining, and cutting it would save little.

    The budget leaves the epochs of :func:`default_pretrain_epochs` as they are on a
    machine with fast bfloat16 (the development machine's rows in
    docs/benchmarks.md), and keeps the whole default fit of a slower processor near
    the bounds the project holds itself to on 2 cores: 2 minutes for the digits,
    10 for USPS and for 2,000 colour images, 20 for 10,000 and 40 for 70,000. The
    grayscale curve above the digits was steepened from the exponent 0.85 to 1.2 to
    use the time those bounds leave after the views and heads (about 1.5 minutes on 2
    AVX2 cores): with 0.85, USPS got 4 minutes, 12-14 epochs on such a processor and
    ACC 0.827 / 0.830 / 0.961 over seeds 0-2; with 24 epochs seed 0 reached 0.980.
    """
    ratio = max(n_samples, 1) / 1_800
    seconds = max(30.0, 60.0 * ratio ** 0.85)
    if colour:
        return 3.5 * seconds
    return seconds if ratio <= 1 else min(GRAY_BUDGET_CAP, 60.0 * ratio ** 1.2)


def default_simclr_settings(colour, device=None):
    """``pretrain_batch_size``, ``pretrain_learning_rate`` and ``temperature`` for "auto".

    Grayscale images: AdamW 1e-3, temperature 0.5 (SimCLR's CIFAR temperature), batch
    256 on CUDA and 64 elsewhere (``device`` None included), the split of
    :func:`default_pretrain_epochs`. On a CPU the cost of a view hardly depends on the
    batch, so batch 64 buys up to four times the
    optimiser steps of batch 256 for the same epochs (on data sets of at least 256
    images; smaller ones had their batch clipped to ``N`` before); at the few epochs a
    CPU budget allows that sharpened the embedding on all three development sets
    (SimCLR alone, seeds 0 and 1, share of the 20 nearest neighbours with the same
    class: digits 0.969 / 0.969 against 0.967 / 0.963 at 20 epochs, USPS 0.969 / 0.970
    against 0.961 / 0.961 at 10, Fashion-MNIST subset 0.710 / 0.706 against
    0.703 / 0.700 at 6), and whole digits fits at 20 epochs reached ACC
    0.985 / 0.951 / 0.952 / 0.948 / 0.946 (seeds 0-4) against
    0.944 / 0.952 / 0.947 / 0.941 / 0.941. A GPU runs the full epochs, and there the
    time of an epoch grows with its number of steps (small kernels), so it keeps 256;
    batch 64 was not measured there.

    Colour images: temperature 0.2, batch 128 and 4e-3 on CUDA, batch 64 and 2e-3
    elsewhere. The GPU values were chosen on random-colour shapes at 150 epochs,
    whose views must teach the network to ignore colour: that takes many steps, and
    a lower temperature sharpened their embedding (kNN accuracy 0.44 against 0.39 at
    0.5). At the 34 epochs a CPU budget allows for 2,000 shapes (about the same time
    at any of these batches; SimCLR alone, share of the 20 nearest neighbours with the
    same class / 3-fold linear probe of the frozen embedding, seed 0): batch 128 and
    4e-3 gave 0.309 / 0.548, batch 128 and 2e-3 0.342 / 0.604, batch 64 and 4e-3
    0.321 / 0.537, batch 64 and 2e-3 0.407 / 0.671, batch 64 and 1e-3 0.389 / 0.672,
    batch 32 and 1e-3 0.406 / 0.689; seed 1: 0.221 / 0.420 at batch 128 and 4e-3,
    0.359 / 0.597 at batch 64 and 2e-3. Photos, whose views keep the colours closer
    (:mod:`spice_learn.invariances`), use them too. The grayscale settings did better
    on digits and USPS (16 px, minutes on a CPU; USPS, 41 epochs: 0.978 against 0.921
    ACC after SPICE-Semi).
    """
    cuda = on_cuda(device)
    if colour:
        if cuda:
            return {"batch_size": 128, "learning_rate": 4e-3, "temperature": 0.2}
        return {"batch_size": 64, "learning_rate": 2e-3, "temperature": 0.2}
    return {"batch_size": 256 if cuda else 64, "learning_rate": 1e-3, "temperature": 0.5}


def resolve_backbone(backbone, image_size, device=None):
    """``"auto"`` -> a model name for images of ``image_size`` on ``device``;
    anything else unchanged. On the CPU (or ``device=None``) ``"auto"`` is always
    the small conv net; on CUDA a ResNet-18 for images above 28 px."""
    if isinstance(backbone, str) and backbone == "auto":
        if on_cuda(device) and max(image_size) > SMALL_BACKBONE_MAX_SIZE:
            return DEFAULT_BACKBONE
        return SMALL_BACKBONE
    return backbone


def wants_pretraining(pretrain, backbone, weights):
    """``pretrain="auto"`` pretrains a timm model with random weights, and only that."""
    if pretrain == "simclr":
        return True
    return (pretrain == "auto" and isinstance(backbone, str) and backbone != "precomputed"
            and weights is None)


def resolve_flip(flip, extractor):
    """``flip="auto"``: flip only network inputs larger than ``TINY_INPUT_SIZE``."""
    if isinstance(flip, str):
        return max(extractor.input_size) > TINY_INPUT_SIZE
    return bool(flip)


def is_colour(images, n_probe=512):
    """Whether ``images`` (uint8 ``(N, 3, H, W)`` or an ImageStream) have colour: some
    pixel of the first ``n_probe`` images has channels that differ by more than 2 levels
    (grayscale images read as RGB repeat one channel; JPEG noise stays below that)."""
    probe = images[: min(n_probe, images.shape[0])].to(torch.int16)  # a stream decodes them
    spread = (probe.amax(dim=1) - probe.amin(dim=1)).float()
    return bool((spread > 2).float().mean() > 0.01)


def default_pretrain_epochs(n_samples, device, colour=False, batch_size=None):
    """``pretrain_epochs="auto"``: 100 on CUDA; on the CPU 60 epochs for grayscale sets
    of up to 20,000 images and ``60 * sqrt(20,000 / N)`` above, at least 15 (32 for
    70,000 images), so that the steps grow more slowly than the data and the time
    stays bounded. Colour images get about ``100 * sqrt(10,000 / N)``, at least 40
    and at most 150 (150 up to 4,400 images, 100 for 10,000): they keep learning long
    after a grayscale set has settled (random-colour shapes, whose views must also
    teach the network to ignore colour, 2,000 images: 0.36 ACC after 60 epochs, 0.53
    after 150, one seed; CIFAR-10 photos, 10,000 images: 0.215 after 40 epochs and
    0.259 after 120 at 16 px, one seed; sklearn digits: the same after 100 epochs as
    after 60). The grayscale rule gave more than the earlier ``40 * sqrt(10,000 / N)``
    to sets of 4,400-20,000 images: over seeds 0-2, USPS (9,298 images) at 60 epochs
    instead of 41 reached 0.981-0.982 ACC (0.979-0.982 before) and the Fashion-MNIST
    subset (12,669) at 60 instead of 36 a mean of 0.682 (0.672), at about 1.5 times
    the fit time.

    With the SimCLR ``batch_size`` given, small data sets get at least
    :data:`MIN_PRETRAIN_STEPS` steps (:func:`~spice_learn.pretrain.steps_per_epoch`
    an epoch): 200 images at batch 64 take 3 steps an epoch, and 60 epochs (180 steps) left
    200 of sklearn's digits at ACC 0.675 / 0.775 (seeds 0 / 1; KMeans on the pixels
    0.720 / 0.735), 200 epochs 0.870 / 0.805 and 500 epochs 0.865 / 0.815. Grayscale
    sets of at least 640 images (colour: 256) already have them at batch 64."""
    n = max(n_samples, 1)
    if on_cuda(device):
        epochs = 100
    elif colour:
        epochs = int(min(150, max(40, round(COLOUR_EPOCH_FACTOR * 40 * math.sqrt(10_000 / n)))))
    else:
        epochs = int(min(60, max(15, round(60 * math.sqrt(20_000 / n)))))
    if batch_size is not None:
        epochs = max(epochs, math.ceil(MIN_PRETRAIN_STEPS / steps_per_epoch(n, int(batch_size))))
    return epochs


def plan_representation(backbone, images, *, pretrain, pretrain_epochs, device,
                        batch_size=None, learning_rate=None, temperature=None,
                        invariances=None, seed=0, pretrain_time=None, small_stem="auto",
                        finetune_step_views=None, finetune_colour=True):
    """The :class:`Stage1Plan` for ``images`` on ``device``; None for
    ``pretrain_epochs``, the SimCLR settings and ``invariances`` means "auto": the
    invariances the images pass the label-free test of
    :func:`~spice_learn.invariances.detect_invariances` for (drawing with ``seed``),
    which both stage 1's views and SPICE-Semi's "finetune" views follow.

    With ``pretrain_time="auto"``, "auto" epochs and a timm name (or "auto") for the
    backbone on a CPU, a throwaway copy of the backbone (random weights,
    ``small_stem``) is built and timed (:func:`~spice_learn.pretrain.simclr_speed`),
    and when fewer than :data:`BUDGET_SLACK` of the default epochs fit the budget
    of :func:`cpu_pretrain_budget`, the epochs become
    ``budget * views_per_second / (2 N)``, at least :data:`MIN_BUDGET_EPOCHS`. The
    epochs are then fixed for the run, so a seed repeats its result as long as the
    measurement lands on the same whole number of epochs (``plan_["pretrain_epochs"]``
    passed as ``pretrain_epochs`` repeats it exactly). Otherwise nothing is built.

    ``finetune_step_views`` (images one SPICE-Semi "finetune" step trains on, or
    None): on that budget path, when :data:`SEMI_BUDGET_SHARE` of the budget buys at
    least :data:`MIN_FINETUNE_STEPS` such steps at the measured speed, stage 1 keeps
    the rest of the budget and the plan's ``finetune_steps`` say how many fit.
    ``finetune_colour=False`` (``semi="auto"``) reserves that share for grayscale
    images only: colour images give the whole budget to stage 1 (docs/benchmarks.md,
    "Sixteenth session": on random-colour shapes the finetune lowered the clustering
    that SPICE-Self had found, and the whole budget for SimCLR raised it)."""
    image_size = tuple(int(s) for s in images.shape[-2:])
    colour = is_colour(images)
    if isinstance(backbone, FeatureExtractor):
        name, size = backbone.name, tuple(backbone.input_size)
    else:
        name = resolve_backbone(backbone, image_size, device)
        if not isinstance(name, str):
            name = type(name).__name__
        size = _working_size(name, colour, image_size)
    given = {"batch_size": batch_size, "learning_rate": learning_rate,
             "temperature": temperature}
    settings = {key: default if given[key] is None else given[key]
                for key, default in default_simclr_settings(colour, device).items()}
    epochs = 0
    if pretrain:
        epochs = (default_pretrain_epochs(images.shape[0], device, colour,
                                          batch_size=settings["batch_size"])
                  if pretrain_epochs is None else int(pretrain_epochs))
    scores = {}
    if invariances is None:  # every process of a torchrun job takes rank 0's outcome
        test = distributed.broadcast_object(detect_invariances(images, colour=colour, seed=seed))
        invariances, scores = test.invariances, test.scores
    budget = speed = finetune_steps = None
    if (pretrain and pretrain_epochs is None and isinstance(pretrain_time, str)
            and torch.device(device).type == "cpu" and isinstance(backbone, str)):
        budget = cpu_pretrain_budget(images.shape[0], colour)
        probe = build_backbone(name, None, image_size, small_stem=small_stem, seed=seed,
                               input_size=size)
        augment = contrastive_augment(probe.input_size, flip=False, colour=colour,
                                      invariances=tuple(invariances))
        speed = simclr_speed(probe, images, batch_size=settings["batch_size"],
                             augment=augment, device=torch.device(device))
        if finetune_step_views and (finetune_colour or not colour):
            steps = int(SEMI_BUDGET_SHARE * budget * speed / finetune_step_views)
            if steps >= MIN_FINETUNE_STEPS:
                finetune_steps, budget = steps, (1 - SEMI_BUDGET_SHARE) * budget
        fitting = int(budget * speed / (2 * max(images.shape[0], 1)))
        if fitting < BUDGET_SLACK * epochs:  # near the rule's epochs, the rule stands
            epochs = max(MIN_BUDGET_EPOCHS, fitting)
    return Stage1Plan(name, size, colour, epochs, **settings,
                      invariances=tuple(invariances), invariance_scores=scores,
                      time_budget=budget, views_per_second=speed,
                      finetune_steps=finetune_steps)


def _planned_time(pretrain_time, checkpoint_dir):
    """``pretrain_time`` for the plan: "auto" means no budget when pretraining saves
    checkpoints, so that a rerun plans the same epochs and finds its checkpoint (the
    measured speed would vary, and the epochs are part of the checkpoint's name)."""
    if checkpoint_dir is not None and isinstance(pretrain_time, str):
        return None
    return pretrain_time


def _working_size(name, colour, image_size):
    """Input size of ``spice_convnet4`` for the data; None (the model's own) otherwise.

    Grayscale images: :data:`GRAY_INPUT_SIZE`. Colour images: their larger side,
    clipped to ``GRAY_INPUT_SIZE``-:data:`COLOUR_INPUT_SIZE`. Photos need the detail
    more than digits do: on 5,000 CIFAR-10 training images, one seed, the same ~300 s
    fit gave 0.26 ACC at 16 px (141 epochs), 0.32 at 24 px (63, with the flips that
    inputs above 20 px get) and 0.33 at 32 px (35); at the default epochs, random-colour
    shapes over seeds 0-2 went from 0.488 to 0.482 mean ACC at 24 px and CIFAR-10's
    test set from 0.251 to 0.348, at 1.7-1.9 times the fit time."""
    if name != SMALL_BACKBONE:
        return None
    side = GRAY_INPUT_SIZE
    if colour:
        side = min(COLOUR_INPUT_SIZE, max(GRAY_INPUT_SIZE, max(image_size)))
    return (side, side)


def estimate_seconds(plan, n_samples, n_views, finetune_step_views=None):
    """Seconds stage 1 and the view cache take on a CPU, or None without a cost model;
    with the plan's SPICE-Semi ``finetune_steps`` and ``finetune_step_views`` (images
    one step trains on) given, the finetune's time too, each image costing a
    training view (as the plan's reservation assumes).

    With the speed measured for the plan (``plan.views_per_second``), from it: a
    cached view (its per-image augmentation and a forward pass) costs as much as
    ``TRAIN_VIEWS_PER_SECOND_16PX / EMBED_IMAGES_PER_SECOND_16PX`` training views,
    the ratio of the two on the development machine. Otherwise, for
    ``spice_convnet4`` only, from those constants (2 idle cores with fast bfloat16:
    a processor without it takes about five times as long)."""
    train_speed = plan.views_per_second
    if train_speed is None:
        if plan.backbone != SMALL_BACKBONE or plan.input_size is None:
            return None
        pixels = (plan.input_size[0] * plan.input_size[1] / 256) ** PIXEL_COST_EXPONENT
        train_speed = TRAIN_VIEWS_PER_SECOND_16PX / pixels
    embed_speed = train_speed * EMBED_IMAGES_PER_SECOND_16PX / TRAIN_VIEWS_PER_SECOND_16PX
    finetune = (plan.finetune_steps or 0) * (finetune_step_views or 0)
    return ((2 * n_samples * plan.pretrain_epochs + finetune) / train_speed
            + n_samples * n_views / embed_speed)


def learn_representation(
    backbone, weights, images, *, pretrain, small_stem, flip, build_seed, pretrain_seed,
    device, verbose=0, plan=None, **pretrain_params,
):
    """The extractor a model embeds with, trained on ``images`` when ``pretrain``.

    Parameters
    ----------
    backbone : str, torch.nn.Module or FeatureExtractor
        A timm name or "auto", a user module, or a fitted extractor (deep-copied:
        the caller's object is never trained).
    weights : None, "pretrained" or path-like
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W), or ImageStream
    pretrain : bool
        Whether to run SimCLR (see :func:`wants_pretraining`).
    small_stem, flip
        As in :class:`~spice_learn.SpiceClustering`.
    build_seed, pretrain_seed : int
    device : torch.device
    verbose : int
    plan : Stage1Plan or None
        From :func:`plan_representation` (None: planned here, with
        ``pretrain_params["max_epochs"]`` as the epochs, None meaning "auto").
    **pretrain_params
        ``max_epochs``, ``max_time``, ``batch_size``, ``learning_rate``,
        ``temperature``, ``projection_dim``, ``checkpoint_dir`` and ``compile``
        of :func:`~spice_learn.pretrain.pretrain_simclr`, and ``invariances`` for the
        plan (all of them only read from ``plan`` when it is given).

    Returns
    -------
    extractor : FeatureExtractor
        Frozen, in eval mode.
    history : list of float
        Pretraining loss per epoch (empty without pretraining).
    flip : bool
        The resolved flip setting for the extractor's input size.
    plan : Stage1Plan
        The given or resolved plan.
    """
    if plan is None:
        plan = plan_representation(
            backbone, images, pretrain=pretrain, device=device,
            pretrain_epochs=pretrain_params.get("max_epochs"), seed=build_seed,
            pretrain_time=_planned_time(pretrain_params.get("max_time"),
                                        pretrain_params.get("checkpoint_dir")),
            small_stem=small_stem,
            **{key: pretrain_params.get(key)
               for key in ("batch_size", "learning_rate", "temperature", "invariances")})
    pretrain_params.pop("invariances", None)
    if isinstance(pretrain_params.get("max_time"), str):  # "auto": spent on the epochs
        pretrain_params["max_time"] = None
    pretrain_params.update(max_epochs=plan.pretrain_epochs, batch_size=plan.batch_size,
                           learning_rate=plan.learning_rate, temperature=plan.temperature)
    if isinstance(backbone, FeatureExtractor):
        extractor = copy.deepcopy(backbone)
    else:
        name = resolve_backbone(backbone, tuple(images.shape[-2:]), device)
        extractor = build_backbone(name, weights, tuple(images.shape[-2:]),
                                   small_stem=small_stem, seed=build_seed,
                                   input_size=plan.input_size)
    flip = resolve_flip(flip, extractor)
    history = []
    if pretrain:
        augment = contrastive_augment(extractor.input_size, flip=flip, colour=plan.colour,
                                      invariances=plan.invariances)
        history = pretrain_simclr(extractor, images, flip=flip, seed=pretrain_seed,
                                  device=device, verbose=verbose, augment=augment,
                                  **pretrain_params)
    extractor.module.eval().requires_grad_(False)
    return extractor, history, flip, plan


@dataclass(frozen=True)
class Stage1Settings:
    """Stage-1 settings of an estimator, checked; None stands for "auto" (resolved
    from the images by :func:`plan_representation`). The fields are the
    :class:`~spice_learn.SpiceClustering` parameters of the same names, with
    ``pretrain`` resolved by :func:`wants_pretraining` and ``max_time`` for
    ``pretrain_time``."""

    backbone: Any
    weights: Any = None
    pretrain: bool = False
    small_stem: Any = "auto"
    flip: Any = "auto"
    pretrain_epochs: int | None = None
    #: ``pretrain_time``: seconds, None (no budget) or "auto" (:func:`cpu_pretrain_budget`)
    max_time: Any = "auto"
    checkpoint_dir: Any = None
    #: SimCLR settings (None: :func:`default_simclr_settings` for the images)
    batch_size: int | None = None
    learning_rate: float | None = None
    temperature: float | None = None
    projection_dim: int = 128
    compile: bool = False
    #: optional invariances of the contrastive views (None: tested on the images)
    invariances: tuple | None = None
    #: images one SPICE-Semi "finetune" step trains on, when SPICE-Semi may finetune
    #: (the CPU budget then leaves it a share, :func:`plan_representation`); else None
    finetune_step_views: int | None = None
    #: whether that share is also left for colour images (``semi="finetune"`` asked for
    #: explicitly); ``semi="auto"`` leaves it for grayscale images only
    finetune_colour: bool = True


@dataclass(frozen=True)
class Representation:
    """Result of :func:`represent`: the frozen ``extractor``, the pretraining loss per
    epoch (``history``), the resolved ``flip``, the ``plan`` and its
    ``estimated_seconds`` (None without a cost model)."""

    extractor: FeatureExtractor
    history: list
    flip: bool
    plan: Stage1Plan
    estimated_seconds: float | None

    def recipe(self):
        """``colour`` and ``invariances`` of the contrastive views, as keyword arguments
        of :func:`~spice_learn.ssl_augment.contrastive_augment`."""
        return {"colour": self.plan.colour, "invariances": self.plan.invariances}

    def summary(self):
        """The stage-1 entries of a fitted estimator's ``plan_``."""
        return plan_summary(self.plan, self.extractor)


def plan_summary(plan, extractor):
    """The stage-1 entries of a fitted estimator's ``plan_``: ``plan`` as carried out
    by ``extractor``."""
    return {"backbone": plan.backbone, "input_size": tuple(extractor.input_size),
            "colour": plan.colour, "pretrain_epochs": plan.pretrain_epochs,
            "pretrain_batch_size": plan.batch_size,
            "pretrain_learning_rate": plan.learning_rate,
            "temperature": plan.temperature, "invariances": plan.invariances,
            "invariance_scores": dict(plan.invariance_scores),
            "pretrain_budget": plan.time_budget,
            "pretrain_views_per_second": plan.views_per_second,
            "finetune_steps": plan.finetune_steps}


def plan_stage1(images, settings, *, seed, device):
    """Stage 1's plan for ``images`` under ``settings`` (:class:`Stage1Settings`): the
    backbone, input size, invariances and SimCLR epochs its "auto" values resolve to on
    ``device`` (:func:`plan_representation`; ``seed`` seeds the invariance test and the
    speed probe). Nothing is trained.

    Returns
    -------
    Stage1Plan
    """
    s = settings
    return plan_representation(s.backbone, images, pretrain=s.pretrain, device=device,
                               pretrain_epochs=s.pretrain_epochs, batch_size=s.batch_size,
                               learning_rate=s.learning_rate, temperature=s.temperature,
                               invariances=s.invariances, seed=seed,
                               pretrain_time=_planned_time(s.max_time, s.checkpoint_dir),
                               small_stem=s.small_stem,
                               finetune_step_views=s.finetune_step_views,
                               finetune_colour=s.finetune_colour)


def represent(images, settings, plan, *, build_seed, pretrain_seed, device, n_views, verbose=0,
              log=None):
    """Stage 1 of a fit: build and (when asked) pretrain the backbone that ``plan``
    (:func:`plan_stage1`) describes.

    Parameters
    ----------
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W), or ImageStream
    settings : Stage1Settings
    plan : Stage1Plan
    build_seed, pretrain_seed : int
    device : torch.device
    n_views : int
        Views the cache will hold per image (for the time estimate and the log).
    verbose : int
    log : callable or None
        Called with the plan before the work starts and a line after pretraining.

    Returns
    -------
    Representation
    """
    s = settings
    estimate = estimate_seconds(plan, images.shape[0], n_views,
                                finetune_step_views=s.finetune_step_views)
    log = log or (lambda message: None)
    size = "its own input size" if plan.input_size is None else \
        "x".join(str(side) for side in plan.input_size) + " px"
    found = ", ".join(plan.invariances) or "none"
    tested = ", ".join(f"{name} {score:.2f}" for name, score in plan.invariance_scores.items())
    found += f"; two-sample test accuracy {tested}" if tested else ""
    work = "stage 1 and the views" if plan.finetune_steps is None else \
        "stage 1, the views and the SPICE-Semi finetune"
    log(f"plan: {plan.backbone} at {size} ({'colour' if plan.colour else 'grayscale'} images), "
        f"{plan.pretrain_epochs} SimCLR epochs (optional invariances: {found}), "
        f"{n_views} cached views per image"
        + ("" if plan.time_budget is None else
           f" (held to a budget of {plan.time_budget / 60:.1f} min at the "
           f"{plan.views_per_second:.0f} views/s measured here"
           + ("" if plan.finetune_steps is None else
              f"; {plan.finetune_steps} SPICE-Semi finetune steps fit the time left") + ")")
        + ("" if estimate is None or device.type != "cpu" else
           f"; {work} take about {estimate / 60:.1f} min"
           + ("" if plan.views_per_second is not None else " on 2 fast CPU cores")))
    extractor, history, flip, _ = learn_representation(
        s.backbone, s.weights, images, pretrain=s.pretrain, small_stem=s.small_stem,
        flip=s.flip, build_seed=build_seed, pretrain_seed=pretrain_seed, device=device,
        verbose=verbose, plan=plan, max_time=s.max_time, batch_size=s.batch_size,
        learning_rate=s.learning_rate, temperature=s.temperature,
        projection_dim=s.projection_dim, checkpoint_dir=s.checkpoint_dir, compile=s.compile)
    if s.pretrain:
        log(f"stage 1: {len(history)} SimCLR epochs on {images.shape[0]} images, "
            f"final loss {history[-1]:.4f}")
    return Representation(extractor, history, flip, plan, estimate)
