"""Backbone creation: timm models by name, local weight files, user modules.

A backbone maps a normalised image batch ``(B, 3, H, W)`` to features ``(B, D)``.
:func:`build_backbone` returns a :class:`FeatureExtractor` that bundles the
module with the preprocessing it expects (input size, mean, std), resolved from
the timm model's own data config.

Weights come from one of four places:

* ``weights=None`` — random initialisation (seeded);
* ``weights="pretrained"`` — timm's pretrained zoo (needs a network or a filled
  Hugging Face cache; fails fast and clearly when neither is there);
* ``weights="path/to/file"`` — a local timm or torchvision state dict
  (``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``, or
  ``.safetensors``);
* ``backbone=<torch.nn.Module>`` — the user's own module, copied, never modified.
"""

from __future__ import annotations

import copy
import difflib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = [
    "FeatureExtractor", "build_backbone", "check_model_name", "load_state_dict_file",
    "SMALL_IMAGE_SIZE",
]

#: Images whose longer side is at most this many pixels count as "small": they keep
#: (about) their own size instead of being resized to the model's 224 px default.
SMALL_IMAGE_SIZE = 64
#: Small images are never fed at less than this size.
MIN_INPUT_SIZE = 32
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_HOST = ("huggingface.co", 443)


@dataclass
class FeatureExtractor:
    """A frozen feature extractor and the preprocessing it expects.

    Attributes
    ----------
    module : torch.nn.Module
        Maps ``(B, 3, H, W)`` float images, normalised with ``mean``/``std``,
        to ``(B, feature_dim)`` features.
    input_size : tuple of int
        ``(H, W)`` the images are resized to before the forward pass.
    mean, std : tuple of float
        Per-channel normalisation applied to images scaled to [0, 1].
    feature_dim : int
        Output dimension ``D``.
    name : str
        Model name (timm name or the class name of a user module).
    stem : str
        ``"original"``, ``"cifar"`` (3x3 stride-1 conv, no max-pool) or
        ``"stride1"`` (the original conv kernel at stride 1, no max-pool).
    """

    module: nn.Module
    input_size: tuple
    mean: tuple
    std: tuple
    feature_dim: int
    name: str
    stem: str = "original"


def build_backbone(backbone, weights, image_size, *, small_stem="auto", seed=0, input_size=None):
    """Create the feature extractor for images of ``image_size``.

    Parameters
    ----------
    backbone : str or torch.nn.Module
        A timm model name (e.g. ``"resnet18"``) or a module that returns
        ``(B, D)`` features (or ``(B, C, H, W)`` maps, which are average-pooled).
    weights : None, "pretrained" or path-like
        Where the weights come from (see the module docstring). Must be None
        for a user module, whose own weights are used.
    image_size : tuple of int
        ``(H, W)`` of the images to embed.
    small_stem : {"auto", True, False}
        For a ResNet-like timm model, drop the stem's max-pool and stride: a fresh
        3x3 stride-1 conv when the weights are random or the checkpoint has one
        (the CIFAR stem of SCAN/SPICE), the pretrained kernel at stride 1
        otherwise. ``"auto"`` does this for small images only (longer side <=
        :data:`SMALL_IMAGE_SIZE`); ``True`` forces it at any size, which costs
        about 16x the compute at 224 px.
    seed : int
        Seed for the random initialisation (the global RNG state is restored).
    input_size : tuple of int or None
        ``(H, W)`` the network is fed, overriding its default (None: the model's
        preferred size for fixed-size models such as ``spice_convnet4``, the images'
        own size, at least 32 px, for small images, else timm's configuration).

    Returns
    -------
    FeatureExtractor
    """
    small = max(image_size) <= SMALL_IMAGE_SIZE
    if isinstance(backbone, nn.Module):
        if weights is not None:
            raise ValueError(
                "weights must be None when backbone is a torch.nn.Module (its own "
                f"weights are used); got weights={weights!r}."
            )
        return _from_user_module(backbone, image_size)
    name = check_model_name(backbone)
    state_dict = None
    if weights not in (None, "pretrained"):
        state_dict = load_state_dict_file(weights)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: fork_rng restores it
        if weights == "pretrained":
            model = _create_pretrained(name)
        else:
            model = timm.create_model(name, pretrained=False, num_classes=0)
    stem = "original"
    if small_stem is True or (small_stem == "auto" and small):
        use_cifar = weights is None or _has_small_conv1(state_dict)
        stem = _adapt_stem(model, "cifar" if use_cifar else "stride1", seed)
    if state_dict is not None:
        _load_into(model, state_dict, weights)
    config = timm.data.resolve_model_data_config(model)
    fixed = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False))
    if input_size is not None:
        input_size = tuple(int(s) for s in input_size)
    elif small and not fixed:
        input_size = tuple(max(int(s), MIN_INPUT_SIZE) for s in image_size)
    else:
        input_size = tuple(int(s) for s in config["input_size"][1:])
    model.eval().requires_grad_(False)
    return FeatureExtractor(
        module=model,
        input_size=input_size,
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        feature_dim=int(model.num_features),
        name=name,
        stem=stem,
    )


def load_state_dict_file(path):
    """Read a state dict from a local file, safely.

    ``.safetensors`` files are read with :mod:`safetensors`; anything else with
    ``torch.load(..., map_location="cpu", weights_only=True)``. Checkpoints that
    wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and
    a ``module.`` prefix (from DataParallel) is stripped.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    state_dict : dict of str to torch.Tensor
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "weights must be None, 'pretrained' or a path to a local weight file; "
            f"got {type(path).__name__}."
        )
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"weights file {str(path)!r} does not exist. Pass weights=None for random "
            "initialisation, 'pretrained' for timm's zoo, or the path of a state dict."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error becomes a clear ValueError
        raise ValueError(f"Cannot read weights file {str(path)!r}: {exc}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_model_name(name):
    """Return ``name`` if it is a timm model name; else a TypeError/ValueError."""
    if not isinstance(name, str):
        raise TypeError(
            "backbone must be a timm model name, a torch.nn.Module or 'precomputed'; "
            f"got {type(name).__name__}."
        )
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown backbone {name!r}: not a timm model name.{hint}")
    return name


def _network_reachable(timeout=0.5):
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hub_file(hf_hub_id):
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return None
    repo, _, revision = hf_hub_id.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _create_pretrained(name):
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(
            f"timm has no pretrained weights for backbone {name!r}; use weights=None "
            "or the path of a local weight file."
        )
    if _network_reachable():
        return timm.create_model(name, pretrained=True, num_classes=0)
    cached = _cached_hub_file(cfg.hf_hub_id) if cfg.hf_hub_id else None
    if cached is None:
        raise ValueError(
            f"weights='pretrained' needs to download {name!r} weights, but the network "
            "is not reachable (or HF_HUB_OFFLINE is set) and they are not in the local "
            "Hugging Face cache. Download the file on a machine with a network (e.g. "
            f"timm.create_model({name!r}, pretrained=True) and save its state_dict) and "
            "pass weights='/path/to/file.pth' (timm or torchvision state dict, or "
            ".safetensors), or use weights=None."
        )
    return timm.create_model(
        name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": cached}
    )


def _has_small_conv1(state_dict):
    weight = (state_dict or {}).get("conv1.weight")
    return weight is not None and weight.ndim == 4 and weight.shape[-1] <= 3


def _adapt_stem(model, mode, seed):
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        return "original"
    if mode == "cifar":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed + 1)
            model.conv1 = nn.Conv2d(
                conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False
            )
    else:
        conv.stride = (1, 1)
    model.maxpool = nn.Identity()
    return mode


def _load_into(model, state_dict, path):
    own = model.state_dict()
    # Classifier weights of the checkpoint are not part of a feature extractor.
    extra = [k for k in state_dict if k not in own]
    head_prefixes = ("fc.", "head.", "classifier.", "linear.", "last_linear.", "head_dist.")
    unexpected = [k for k in extra if not k.startswith(head_prefixes)]
    # Old checkpoints lack BatchNorm's num_batches_tracked; PyTorch fills it in.
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"weights file {str(path)!r} does not fit backbone {model.__class__.__name__}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} "
            f"unexpected keys (e.g. {unexpected[:3]})."
        )
    present = [k for k in own if k in state_dict]
    mismatched = [k for k in present if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise ValueError(
            f"weights file {str(path)!r} does not fit the backbone: {len(mismatched)} "
            f"tensors have other shapes, e.g. {k!r} {tuple(state_dict[k].shape)} in the "
            f"file vs {tuple(own[k].shape)} in the model."
        )
    model.load_state_dict({k: state_dict[k] for k in present}, strict=True)


def _from_user_module(module, image_size):
    module = copy.deepcopy(module).cpu().eval().requires_grad_(False)
    input_size = tuple(max(int(s), MIN_INPUT_SIZE) for s in image_size)
    cfg = getattr(module, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", _IMAGENET_MEAN))
    std = tuple(cfg.get("std", _IMAGENET_STD))
    wrapped = _PooledFeatures(module).eval()
    with torch.inference_mode():
        probe = wrapped(torch.zeros(2, 3, *input_size))
    return FeatureExtractor(
        module=wrapped,
        input_size=input_size,
        mean=mean,
        std=std,
        feature_dim=int(probe.shape[1]),
        name=module.__class__.__name__,
    )


class _PooledFeatures(nn.Module):
    """Wrap a user module so that its output is always ``(B, D)``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        out = self.module(x)
        if out.ndim == 4:
            out = out.mean(dim=(2, 3))
        return out.flatten(1)
