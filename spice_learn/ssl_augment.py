"""Self-supervised (SSL) views: per-sample random augmentation of whole batches, for
stage 1's contrastive pretraining and SPICE-Semi's end-to-end "finetune" mode.

:mod:`torchvision.transforms.v2` draws one set of random parameters per call, so
giving every image its own crop, rotation and colour change costs one Python call
per image: 11 ms (SimCLR recipe, 32 px) to 43 ms (digit recipe with an elastic
warp, 16 px) per image on a 2-core CPU, far more than the forward and backward
pass of a small network. Pretraining sees every image twice per epoch, so this
module draws per-sample parameters as tensors and applies them to the whole batch
with a handful of kernels (``affine_grid``/``grid_sample`` for geometry, arithmetic
for colour), on whatever device the batch lives. The cached SPICE-Self views, made
once per image, use torchvision's transforms (:mod:`spice_learn.cache_augment`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "contrastive_augment", "weak_augment", "semi_views",
           "check_invariances", "TINY_INPUT_SIZE", "INVARIANCES"]

#: Network inputs up to this many pixels get the digit recipe and no flips.
TINY_INPUT_SIZE = 20
#: The optional invariances a recipe can add (:mod:`spice_learn.invariances` tests them).
INVARIANCES = ("hue", "polarity", "rotation")


@dataclass(frozen=True)
class BatchAugment:
    """Random per-sample augmentation of float image batches in [0, 1].

    Parameters
    ----------
    size : tuple of int
        Output ``(H, W)``.
    crop_scale : tuple of float
        Range of the crop's area as a share of the image (random resized crop).
    crop_ratio : tuple of float
        Range of the crop's aspect ratio (sampled log-uniformly).
    flip : bool
        Horizontal flip with probability 0.5.
    rotation : float
        Maximum absolute rotation in degrees.
    translate : float
        Maximum shift as a share of the side.
    elastic : float
        Standard deviation of a smooth random displacement field (share of the
        half side); 0 turns the elastic warp off.
    brightness, contrast, saturation : float
        Colour jitter strengths: factors drawn from ``U(1 - s, 1 + s)``.
    hue : float
        Hue jitter: the chroma plane (I, Q of YIQ) is rotated by ``U(-hue, hue)``
        turns (0.5: any hue), which keeps the gray level.
    jitter_p : float
        Probability of applying the colour jitter to an image.
    grayscale_p : float
        Probability of turning an image gray.
    invert_p : float
        Probability of inverting an image (``1 - x``): light-on-dark and
        dark-on-light become the same, for data whose polarity is arbitrary.
    noise : float
        Standard deviation of additive Gaussian noise.
    cutout_p : float
        Probability of blanking one square.
    cutout_size : float
        Side of that square as a share of the image side.
    padding_mode : str
        ``grid_sample`` padding: "zeros" (dark background, for digits) or
        "reflection" (natural images).
    """

    size: tuple
    crop_scale: tuple = (0.2, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: bool = True
    rotation: float = 0.0
    translate: float = 0.0
    elastic: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    invert_p: float = 0.0
    noise: float = 0.0
    cutout_p: float = 0.0
    cutout_size: float = 0.0
    padding_mode: str = "reflection"

    def __call__(self, images, generator, rows=None):
        """Augment ``images`` ``(B, 3, H, W)`` float in [0, 1]; returns ``(B, 3, *size)``.

        ``rows=(start, stop, total)``: ``images`` are rows ``start:stop`` of a
        batch of ``total`` (one process's shard under torchrun). The random
        parameters are drawn for all ``total`` rows and sliced, so the shards of
        all processes together get exactly the augmentation of the whole batch
        in one process, and ``generator`` advances the same way on every process.
        """
        device = images.device
        start, stop, total = rows if rows is not None else (0, images.shape[0], images.shape[0])

        def draw(sampler, *shape):
            on = None if generator is None else generator.device  # drawn where gen lives
            return sampler((total, *shape), generator=generator, device=on)[start:stop].to(device)

        def uniform(lo, hi, *shape):
            return draw(torch.rand, *shape) * (hi - lo) + lo

        x = self._geometry(images, uniform)
        x = self._colour(x, uniform)
        if self.noise > 0:
            x = x + self.noise * draw(torch.randn, *x.shape[1:])
        if self.cutout_p > 0 and self.cutout_size > 0:
            x = self._cutout(x, uniform)
        return x.clamp_(0.0, 1.0)

    def _geometry(self, images, uniform):
        b = images.shape[0]
        area = uniform(*self.crop_scale)
        log_ratio = uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=1.0)
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = uniform(-1.0, 1.0) * (1 - w) + uniform(-1.0, 1.0) * 2 * self.translate
        cy = uniform(-1.0, 1.0) * (1 - h) + uniform(-1.0, 1.0) * 2 * self.translate
        angle = uniform(-1.0, 1.0) * math.radians(self.rotation)
        sign = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(w)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [torch.stack([w * cos * sign, -h * sin, cx], 1),
             torch.stack([w * sin * sign, h * cos, cy], 1)], 1)
        grid = F.affine_grid(theta, (b, 3, *self.size), align_corners=False)
        if self.elastic > 0:
            coarse = uniform(-1.0, 1.0, 2, 4, 4) * self.elastic * math.sqrt(3)
            field = F.interpolate(coarse, size=self.size, mode="bicubic", align_corners=False)
            grid = grid + field.permute(0, 2, 3, 1)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode=self.padding_mode,
                             align_corners=False)

    def _colour(self, x, uniform):
        jittered = x
        if self.brightness > 0:
            jittered = jittered * uniform(1 - self.brightness, 1 + self.brightness, 1, 1, 1)
        if self.contrast > 0:
            mean = _luma(x).mean(dim=(2, 3), keepdim=True)
            factor = uniform(1 - self.contrast, 1 + self.contrast, 1, 1, 1)
            jittered = (jittered - mean) * factor + mean
        if self.saturation > 0:
            gray = _luma(jittered)
            factor = uniform(1 - self.saturation, 1 + self.saturation, 1, 1, 1)
            jittered = (jittered - gray) * factor + gray
        if self.hue > 0:
            angle = uniform(-self.hue, self.hue) * (2 * math.pi)
            jittered = _rotate_hue(jittered, angle)
        x = torch.where((uniform(0.0, 1.0) < self.jitter_p).view(-1, 1, 1, 1), jittered, x)
        if self.grayscale_p > 0:
            to_gray = (uniform(0.0, 1.0) < self.grayscale_p).view(-1, 1, 1, 1)
            x = torch.where(to_gray, _luma(x).expand_as(x), x)
        if self.invert_p > 0:
            invert = (uniform(0.0, 1.0) < self.invert_p).view(-1, 1, 1, 1)
            x = torch.where(invert, 1.0 - x, x)
        return x

    def _cutout(self, x, uniform):
        _, _, hgt, wid = x.shape
        ys = torch.arange(hgt, device=x.device).view(1, hgt, 1) / hgt
        xs = torch.arange(wid, device=x.device).view(1, 1, wid) / wid
        half = self.cutout_size / 2
        cy, cx = uniform(0.0, 1.0).view(-1, 1, 1), uniform(0.0, 1.0).view(-1, 1, 1)
        hole = ((ys - cy).abs() < half) & ((xs - cx).abs() < half)
        hole &= (uniform(0.0, 1.0) < self.cutout_p).view(-1, 1, 1)
        return x.masked_fill(hole[:, None], 0.0)


#: RGB -> YIQ (NTSC); Y is the ITU-R 601 luma of :func:`_luma`.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@functools.lru_cache(maxsize=None)
def _yiq_pair(device, dtype):
    """``(YIQ^-1, YIQ)`` in ``dtype`` on ``device``: computed on the host and copied there
    once, not in every training step (a copy from the host waits for the GPU's queue,
    and ``inv`` on CUDA checks its result on the host)."""
    yiq = _YIQ.to(dtype)
    return torch.linalg.inv(yiq).to(device), yiq.to(device)


@functools.lru_cache(maxsize=None)
def _luma_weights(device, dtype):
    """ITU-R 601 weights of R, G and B, shape ``(1, 3, 1, 1)``, on ``device`` (cached)."""
    return torch.tensor([0.299, 0.587, 0.114], dtype=dtype).view(1, 3, 1, 1).to(device)


def _rotate_hue(x, angle):
    """Rotate the chroma of ``(B, 3, H, W)`` RGB images by ``angle`` (radians, ``(B,)``)."""
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)  # (B, 3, 3) in YIQ
    yiq_inv, yiq = _yiq_pair(x.device, x.dtype)
    mix = yiq_inv @ rot.to(x.dtype) @ yiq
    return torch.einsum("bij,bjhw->bihw", mix, x)


def _luma(x):
    """ITU-R 601 gray level of ``(B, 3, H, W)`` images, shape ``(B, 1, H, W)``."""
    return (x * _luma_weights(x.device, x.dtype)).sum(1, keepdim=True)


def contrastive_augment(size, *, flip=True, colour=None, invariances=()):
    """The pretraining augmentation for images of ``size`` (the network input).

    * Colour images (``colour=True``), at any size: SimCLR's random resized crops
      (area 0.2-1), flips (when ``flip``) and colour jitter with p 0.8 (brightness,
      contrast 0.4). How far the colours change depends on whether the data are
      invariant under a hue turn (``"hue"`` in ``invariances``, see
      :mod:`spice_learn.invariances`). If they are, the colours are a nuisance: any
      hue, saturation 0.8 and grayscale with p 0.5, so that the layout of edges and
      textures is what is left to recognise an image by (random-colour shapes, 2,000
      images, 75 epochs at 16 px: kNN accuracy of the embedding 0.33 with SimCLR's
      jitter, 0.70 with these). If not (photos, where the colours of sky and grass
      carry meaning), SimCLR's CIFAR jitter: hue 0.1, saturation 0.4, grayscale with
      p 0.2 (5,000 CIFAR-10 training images, 24 px, 63 epochs, one seed: ACC 0.345
      against 0.322 with the strong changes). SimCLR (Chen et al. 2020) showed that
      crops alone let the network tell images apart by their colour histograms.
    * Grayscale inputs up to 20 px (digits, icons): gentle crops (area 0.5-1),
      rotation up to 15 degrees, 10 % shifts, an elastic warp,
      brightness/contrast jitter, Gaussian noise and a cutout of a third of the
      side with probability 0.5; no flips, dark padding (after IIC's MNIST recipe).
    * Larger grayscale inputs (a ResNet on a GPU): the SimCLR/MoCo v2 CIFAR
      recipe: random resized crop (area 0.2-1), flip, colour jitter 0.4/0.4/0.4
      with p 0.8 (no hue), grayscale p 0.2.

    ``colour=None`` decides by size alone (the last two recipes). ``flip=False`` turns
    flips off (they are off for small images anyway). The other ``invariances``
    add to any recipe: ``"polarity"`` inverts images with p 0.5, ``"rotation"``
    rotates them by any angle (in the normalised coordinates of the input, so
    non-square inputs are also sheared).
    """
    size = tuple(int(s) for s in size)
    invariances = check_invariances(invariances)
    invert_p = 0.5 if "polarity" in invariances else 0.0
    any_angle = "rotation" in invariances
    if colour:
        nuisance = "hue" in invariances
        return BatchAugment(
            size, crop_scale=(0.2, 1.0), flip=flip, rotation=180.0 if any_angle else 0.0,
            brightness=0.4, contrast=0.4, saturation=0.8 if nuisance else 0.4,
            hue=0.5 if nuisance else 0.1, jitter_p=0.8, grayscale_p=0.5 if nuisance else 0.2,
            invert_p=invert_p,
        )
    if max(size) <= TINY_INPUT_SIZE:
        return BatchAugment(
            size, crop_scale=(0.5, 1.0), crop_ratio=(0.8, 1.25), flip=False,
            rotation=180.0 if any_angle else 15.0, translate=0.1, elastic=0.06,
            brightness=0.3, contrast=0.3, saturation=0.0, jitter_p=1.0, grayscale_p=0.0,
            invert_p=invert_p, noise=0.05, cutout_p=0.5, cutout_size=0.35,
            padding_mode="zeros",
        )
    return BatchAugment(size, crop_scale=(0.2, 1.0), flip=flip,
                        rotation=180.0 if any_angle else 0.0, invert_p=invert_p)


def check_invariances(invariances):
    """``invariances`` (an iterable of names among :data:`INVARIANCES`) as a frozenset;
    a ValueError naming the parameter for a string or an unknown name."""
    names = [] if isinstance(invariances, str) else list(invariances)
    if isinstance(invariances, str) or any(
            not (isinstance(name, str) and name in INVARIANCES) for name in names):
        raise ValueError(f"invariances must be a list of names among {INVARIANCES}; got "
                         f"{invariances!r}.")
    return frozenset(names)


def weak_augment(size, *, flip=True):
    """FixMatch's weak augmentation for batches: a random shift of up to 12.5 % of
    the side (and a flip with probability 0.5 when ``flip``; never below 20 px)."""
    size = tuple(int(s) for s in size)
    tiny = max(size) <= TINY_INPUT_SIZE
    return BatchAugment(
        size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=flip and not tiny,
        translate=0.125, brightness=0.0, contrast=0.0, saturation=0.0, jitter_p=0.0,
        grayscale_p=0.0, padding_mode="zeros" if tiny else "reflection",
    )


def semi_views(size, *, flip=True, colour=None, invariances=()):
    """The weak and strong batch augmentations of SPICE-Semi's "finetune" mode.

    Weak: FixMatch's shift and flip (:func:`weak_augment`). Strong: stage 1's
    contrastive recipe (:func:`contrastive_augment` with ``flip``, ``colour`` and
    ``invariances``), not the RandAugment + Cutout of the cached strong views
    (:mod:`spice_learn.cache_augment`), which cost one Python call per image.
    """
    strong = contrastive_augment(size, flip=flip, colour=colour, invariances=invariances)
    return weak_augment(size, flip=flip), strong
