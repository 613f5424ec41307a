"""Former name of :mod:`spice_learn.ssl_augment` (stage 1's batched augmentations);
kept so that existing imports work."""

from .ssl_augment import *  # noqa: F401,F403
from .ssl_augment import __all__  # noqa: F401
