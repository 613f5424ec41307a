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
an accuracy below :data:`INVARIANT_BELOW` declares the data invariant under ``T``. This is the classifier two-sample test (Lopez-Paz and Oquab, "Revisiting
Classifier Two-Sample Tests", ICLR 2017) applied to augmentation choice.

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


__all__ = ["TESTED", "INVARIANT_BELOW", "MAX_TEST_IMAGES", "MIN_TEST_IMAGES",
           "THUMBNAIL_SIZE", "InvarianceTest", "detect_invariances"]

#: The invariances "auto" tests (in :data:`~spice_learn.ssl_augment.INVARIANCES` order); "hue"
#: only for colour images.
TESTED = ("hue", "polarity")
#: Cross-validated accuracy below which the data count as invariant (0.5 is chance).
INVARIANT_BELOW = 0.6
#: Images sampled for the test (half of them transformed).
MAX_TEST_IMAGES = 2000
#: Fewer images than this: no test, no optional invariance.
MIN_TEST_IMAGES = 40
#: Side of the thumbnails the classifier sees.
THUMBNAIL_SIZE = 8
#: Hue turns are drawn per group of images (batched transforms).
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


def _thumbnails(images):
    """``(B, C, H, W)`` uint8 images -> float thumbnails in [0, 1]."""
    x = images.float().div_(255.0)
    return F.adaptive_avg_pool2d(x, THUMBNAIL_SIZE)


def _turn_hue(x, rng):
    out = torch.empty_like(x)
    turns = rng.uniform(0.2, 0.8, _GROUPS)
    for group, turn in zip(np.array_split(np.arange(len(x)), _GROUPS), turns):
        factor = turn if turn <= 0.5 else turn - 1.0  # adjust_hue takes -0.5..0.5
        out[group] = TF.adjust_hue(x[group], float(factor))
    return out


def _invert(x, rng):
    return 1.0 - x


_APPLY = {"hue": _turn_hue, "polarity": _invert}


def _accuracy(original, transformed, seed):
    """Cross-validated accuracy of telling ``original`` thumbnails from ``transformed``
    ones (row ``i`` of both is the same image: the folds keep the pair together)."""
    features = torch.cat([original, transformed]).flatten(1).numpy()
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
        No invariance and no scores with fewer than :data:`MIN_TEST_IMAGES` images.
    """
    n = images.shape[0]
    if n < MIN_TEST_IMAGES:
        return InvarianceTest()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(n, MAX_TEST_IMAGES), replace=False))
    thumbs = _thumbnails(images[rows])
    if not colour:
        thumbs = thumbs[:, :1]
    scores = {}
    for name in TESTED:
        if name == "hue" and not colour:
            continue
        changed = _APPLY[name](thumbs, rng).clamp_(0.0, 1.0)
        scores[name] = _accuracy(thumbs, changed, seed)
    invariances = tuple(name for name, score in scores.items() if score < INVARIANT_BELOW)
    return InvarianceTest(invariances, scores)
