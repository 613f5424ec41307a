"""Former name of :mod:`spice_learn.cache_augment` (the cached SPICE-Self views); kept so
that existing imports work."""

from .cache_augment import *  # noqa: F401,F403
from .cache_augment import __all__  # noqa: F401
