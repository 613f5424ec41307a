"""Which transformations leave an image set looking the same: label-free two-sample tests
that choose stage 1's optional invariances.

Contrastive pretraining learns to ignore whatever its augmentations change, so an
augmentation must only change what does not tell the images apart. Whether a recoloured,
inverted or rotated image is still "the same image" depends on the data: a random-colour
shape recoloured is the same shape, a photo of grass turned blue is not a natural photo,
and a rotated 6 is a 9. The test asks the data itself. If a transformation ``T`` is a
nuisance of the data set (its images come in every hue, both polarities, every
orientation), then ``T(x)`` is distributed like ``x``, and no classifier can tell
transformed images from untransformed ones. So a random sample of the images is taken
as it is and transformed, a linear classifier (ridge) on 8x8 thumbnails tries to tell
the two apart (3-fold cross-validation that keeps each image's pair in one fold), and
an accuracy below :data:`INVARIANT_BELOW` declares the data invariant under ``T``.
This is the classifier two-sample test (Lopez-Paz and Oquab, "Revisiting Classifier
Two-Sample Tests", ICLR 2017) applied to augmentation choice. The classifier sees each
thumbnail's pixels and, per channel, the quantiles of its values, so that an inverted
histogram shows even where every pixel is 0.5 on average.

The transformations (:data:`TESTED`):

* ``"hue"`` (colour images only): the hue turned by 0.2-0.8 of a full turn. Invariant
  data get stage 1's strong colour changes (any hue, grayscale with p 0.5); other colour
  images get SimCLR's gentle jitter (hue 0.1, grayscale p 0.2).
* ``"polarity"``: the image inverted (``1 - x``). Invariant data get inversion with p 0.5.

Measured on up to 2,000 sampled images of each set (accuracy; 0.5 is chance): random-colour
shapes 0.49-0.50 (hue) and 0.48-0.50 (polarity), 200 of them at 16 px 0.50-0.54 and
0.47-0.52; CIFAR-10 photos 0.70-0.74 and 0.79-0.81; sklearn digits, USPS, the
Fashion-MNIST subset and MNIST 1.0 (polarity).

Rotation is not tested, although the same test tells orientation-free images apart from
upright ones (a quarter, half or three-quarter turn: random-rotation shapes 0.50, photos
0.63, digits 0.82-0.96): adding rotations to the views of the random-rotation shapes,
where the test passes, lowered the ACC from 0.530 to 0.372 (any angle) and 0.365 (quarter
turns) at the default 150 epochs (seed 0), so ``invariances=["rotation", ...]`` is an
explicit choice only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms.v2 import functional as TF


__all__ = ["TESTED", "INVARIANT_BELOW", "MAX_TEST_IMAGES", "MIN_TEST_IMAGES", "UNTESTED_COLOUR",
           "THUMBNAIL_SIZE", "InvarianceTest", "detect_invariances"]

#: The invariances "auto" tests (in :data:`~spice_learn.ssl_augment.INVARIANCES` order); "hue"
#: only for colour images.
TESTED = ("hue", "polarity")
#: Cross-validated accuracy below which the data count as invariant (0.5 is chance).
INVARIANT_BELOW = 0.6
#: Images sampled for the test (each is classified as it is and transformed).
MAX_TEST_IMAGES = 2000
#: Fewer images than this are not tested.
MIN_TEST_IMAGES = 40
#: The invariances of untested colour images: the strong colour changes, the safer error
#: (SimCLR's gentle jitter put random-colour shapes at chance, 0.13 ACC; the strong
#: changes cost photos 0.02).
UNTESTED_COLOUR = ("hue", "polarity")
#: Side of the thumbnails the classifier sees.
THUMBNAIL_SIZE = 8
#: Images read and pooled at a time.
_CHUNK = 256
#: Hue turns are drawn per group of images (``adjust_hue`` takes one turn per call).
_GROUPS = 8


@dataclass(frozen=True)
class InvarianceTest:
    """Result of :func:`detect_invariances`.

    Attributes
    ----------
    invariances : tuple of str
        The transformations the data are invariant under, in :data:`TESTED` order.
    scores : dict
        Transformation name to the classifier's cross-validated accuracy (empty when
        there were too few images to test).
    """

    invariances: tuple = ()
    scores: dict = field(default_factory=dict)


def _thumbnails(images, rows):
    """Float thumbnails in [0, 1] of ``images[rows]``, read in chunks (an ImageStream
    decodes only a chunk at a time; large images are pooled before the next chunk)."""
    chunks = [images[rows[start : start + _CHUNK]] for start in range(0, len(rows), _CHUNK)]
    return torch.cat([F.adaptive_avg_pool2d(chunk.float().div_(255.0), THUMBNAIL_SIZE)
                      for chunk in chunks])


def _turn_hue(x, rng):
    """The hue turned by 0.2-0.8 of a turn (one turn per group of images).

    HSV's hue, not the YIQ chroma rotation of the views (in
    :class:`~spice_learn.ssl_augment.BatchAugment`): a YIQ rotation leaves the RGB cube
    and must be clipped, and the classifier learns to see the clipping (random-colour
    shapes scored 0.56-0.59 that way, against 0.49-0.50 with HSV, which stays in gamut).
    """
    out = torch.empty_like(x)
    turns = rng.uniform(0.2, 0.8, _GROUPS)
    for group, turn in zip(np.array_split(np.arange(len(x)), _GROUPS), turns):
        out[group] = TF.adjust_hue(x[group], float(turn if turn <= 0.5 else turn - 1.0))
    return out


def _invert(x, rng):
    return 1.0 - x


_APPLY = {"hue": _turn_hue, "polarity": _invert}


def _features(thumbs):
    """The thumbnail's pixels and, per channel, the quantiles of its values (the
    quantiles tell a mirrored histogram even where every pixel's mean is 0.5)."""
    levels = torch.linspace(0.1, 0.9, 9, dtype=thumbs.dtype)
    quantiles = torch.quantile(thumbs.flatten(2), levels, dim=2).permute(1, 2, 0)
    return torch.cat([thumbs.flatten(1), quantiles.flatten(1)], dim=1).numpy()


def _accuracy(original, transformed, seed):
    """Cross-validated accuracy of telling the :func:`_features` of original thumbnails
    from those of transformed ones (row ``i`` of both is the same image: the folds keep
    the pair together)."""
    features = np.concatenate([original, transformed])
    labels = np.r_[np.zeros(len(original)), np.ones(len(transformed))]
    pairs = np.r_[np.arange(len(original)), np.arange(len(transformed))]
    classifier = make_pipeline(StandardScaler(), RidgeClassifier(alpha=10.0))
    folds = GroupKFold(n_splits=3, shuffle=True, random_state=seed)
    return float(cross_val_score(classifier, features, labels, groups=pairs, cv=folds).mean())


def detect_invariances(images, *, colour, seed):
    """Which of :data:`TESTED` leave the distribution of ``images`` unchanged.

    Parameters
    ----------
    images : torch.Tensor of dtype uint8, shape (N, 3, H, W), or ImageStream
        Only up to :data:`MAX_TEST_IMAGES` of them, drawn at random, are read.
    colour : bool
        Whether the images have colour (else "hue" is not tested).
    seed : int

    Returns
    -------
    InvarianceTest
        With fewer than :data:`MIN_TEST_IMAGES` images nothing is tested (no scores):
        colour images then get :data:`UNTESTED_COLOUR`, grayscale ones nothing.
    """
    n = images.shape[0]
    if n < MIN_TEST_IMAGES:
        return InvarianceTest(UNTESTED_COLOUR if colour else ())
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(n, MAX_TEST_IMAGES), replace=False))
    thumbs = _thumbnails(images, rows)
    if not colour:
        thumbs = thumbs[:, :1]
    original, scores = _features(thumbs), {}
    for name in TESTED:
        if name == "hue" and not colour:
            continue
        changed = _APPLY[name](thumbs, rng).clamp_(0.0, 1.0)
        scores[name] = _accuracy(original, _features(changed), seed)
    invariances = tuple(name for name, score in scores.items() if score < INVARIANT_BELOW)
    return InvarianceTest(invariances, scores)
