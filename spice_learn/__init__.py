"""spice_learn: image clustering with SPICE as a scikit-learn estimator."""

from . import small_models  # noqa: F401  (registers "spice_convnet4" with timm)
from .estimator import SpiceClustering
from .image_embedder import ImageEmbedder
from .image_stream import ImageStream
from .metrics import cluster_accuracy, clustering_scores

__version__ = "0.1.0"
__all__ = ["SpiceClustering", "ImageEmbedder", "ImageStream", "cluster_accuracy", "clustering_scores", "__version__"]
