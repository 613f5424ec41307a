"""Stage 1 as one step: build the backbone for the images, pretrain it when asked.

Shared by :class:`~spice_learn.SpiceClustering` and
:class:`~spice_learn.ImageEmbedder`, so both choose, build and pretrain
backbones the same way.
"""

from __future__ import annotations

import copy

from .backbones import FeatureExtractor, build_backbone
from .batch_augment import TINY_INPUT_SIZE
from .pretrain import pretrain_simclr

__all__ = ["SMALL_BACKBONE", "DEFAULT_BACKBONE", "SMALL_BACKBONE_MAX_SIZE",
           "resolve_backbone", "wants_pretraining", "resolve_flip", "learn_representation"]

#: ``backbone="auto"``: the small conv net for images up to this size, else a ResNet-18.
SMALL_BACKBONE, SMALL_BACKBONE_MAX_SIZE, DEFAULT_BACKBONE = "spice_convnet4", 28, "resnet18"


def resolve_backbone(backbone, image_size):
    """``"auto"`` -> a model name for images of ``image_size``; anything else unchanged."""
    if isinstance(backbone, str) and backbone == "auto":
        return SMALL_BACKBONE if max(image_size) <= SMALL_BACKBONE_MAX_SIZE else DEFAULT_BACKBONE
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


def learn_representation(
    backbone, weights, images, *, pretrain, small_stem, flip, build_seed, pretrain_seed,
    device, verbose=0, **pretrain_params,
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
    **pretrain_params
        ``max_epochs``, ``max_time``, ``batch_size``, ``learning_rate``,
        ``temperature``, ``projection_dim``, ``checkpoint_dir`` and ``compile``
        of :func:`~spice_learn.pretrain.pretrain_simclr`.

    Returns
    -------
    extractor : FeatureExtractor
        Frozen, in eval mode.
    history : list of float
        Pretraining loss per epoch (empty without pretraining).
    flip : bool
        The resolved flip setting for the extractor's input size.
    """
    if isinstance(backbone, FeatureExtractor):
        extractor = copy.deepcopy(backbone)
    else:
        name = resolve_backbone(backbone, tuple(images.shape[-2:]))
        extractor = build_backbone(name, weights, tuple(images.shape[-2:]),
                                   small_stem=small_stem, seed=build_seed)
    flip = resolve_flip(flip, extractor)
    history = []
    if pretrain:
        history = pretrain_simclr(extractor, images, flip=flip, seed=pretrain_seed,
                                  device=device, verbose=verbose, **pretrain_params)
    extractor.module.eval().requires_grad_(False)
    return extractor, history, flip

