"""The scikit-learn transformer :class:`ImageEmbedder`: images in, embeddings out."""

from __future__ import annotations

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import distributed
from .embedding import embed_images
from .image_input import as_images
from .representation import learn_representation
from .runtime import usable_device
from .validation import check_compile, check_int

__all__ = ["ImageEmbedder"]


class ImageEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed images with a (possibly self-pretrained) backbone, for Pipelines.

    ``fit`` builds the backbone exactly as :class:`~spice_learn.SpiceClustering`
    does (a timm model by name, ``"auto"`` for the image size, a user module or a
    fitted ``backbone_``) and, without weights, pretrains it with SimCLR on ``X``.
    ``transform`` returns L2-normalised embeddings, so that::

        make_pipeline(ImageEmbedder(), StandardScaler(),
                      SpiceClustering(10, backbone="precomputed"))

    clusters images. In that form SpiceClustering's views are feature-space
    augmentations (noise and dropped dimensions, see
    :func:`spice_learn.augment.feature_views`), not image augmentations; passing
    images straight to ``SpiceClustering`` keeps the image views of the paper.

    Parameters
    ----------
    backbone : str, torch.nn.Module or FeatureExtractor, default="auto"
    weights : None, "pretrained" or path-like, default=None
    pretrain : {"auto", "simclr"} or None, default="auto"
    pretrain_epochs : int or "auto", default="auto"
    pretrain_time : float or None, default=None
    small_stem : {"auto", True, False}, default="auto"
    flip : bool or "auto", default="auto"
    batch_size : int, default=256
        Images per forward pass (``embed_batch_size`` of SpiceClustering).
    device : str or torch.device, default="auto"
    compile : bool, default=False
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
        See :class:`~spice_learn.SpiceClustering` for the meaning of each;
        pretraining uses SpiceClustering's default batch size, learning rate,
        temperature and projection size.

    Attributes
    ----------
    backbone_ : FeatureExtractor
        The frozen backbone (on the CPU between calls).
    pretrain_history_ : ndarray of shape (n_pretrain_epochs,)
    n_features_out_ : int
        Embedding dimension ``D``.
    """

    def __init__(self, backbone="auto", *, weights=None, pretrain="auto", pretrain_epochs="auto",
                 pretrain_time=None, small_stem="auto", flip="auto", batch_size=256,
                 device="auto", compile=False, random_state=None, verbose=0):
        self.backbone = backbone
        self.weights = weights
        self.pretrain = pretrain
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_time = pretrain_time
        self.small_stem = small_stem
        self.flip = flip
        self.batch_size = batch_size
        self.device = device
        self.compile = compile
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y=None):
        """Build (and pretrain) the backbone on images ``X``; ``y`` is ignored."""
        from .estimator import (
            SpiceClustering,  # the one place backbone settings are checked
        )

        if isinstance(self.backbone, str) and self.backbone == "precomputed":
            raise ValueError("backbone='precomputed' has no images to embed; pass a model.")
        # SpiceClustering checks the shared settings and resolves "auto" (device,
        # pretraining); its unset pretraining parameters are the defaults used here.
        stage1 = SpiceClustering(
            backbone=self.backbone, weights=self.weights, pretrain=self.pretrain,
            pretrain_epochs=self.pretrain_epochs, pretrain_time=self.pretrain_time,
            small_stem=self.small_stem, flip=self.flip, device=self.device,
            compile=self.compile, verbose=self.verbose,
        )
        params = stage1._check_params()
        check_int(self.batch_size, "batch_size", 1)
        rng = check_random_state(self.random_state)
        build_seed, pretrain_seed = (int(s) for s in rng.randint(0, 2**31 - 1, size=2))
        images = as_images(X)
        device = distributed.setup(params["device"])  # under torchrun: this process's GPU
        build_seed, pretrain_seed = distributed.broadcast_object([build_seed, pretrain_seed])
        extractor, history, _ = learn_representation(
            self.backbone, self.weights, images, pretrain=params["pretrain"],
            small_stem=self.small_stem, flip=self.flip, build_seed=build_seed,
            pretrain_seed=pretrain_seed, device=device,
            verbose=self.verbose if distributed.is_main_process() else 0, max_epochs=params["pretrain_epochs"], max_time=self.pretrain_time,
            batch_size=params["pretrain_batch_size"],
            learning_rate=params["pretrain_learning_rate"], temperature=params["temperature"],
            projection_dim=stage1.projection_dim, compile=params["compile"],
        )
        extractor.module.cpu()
        self.backbone_ = extractor
        self.pretrain_history_ = np.asarray(history, dtype=float)
        self.n_features_out_ = int(extractor.feature_dim)
        return self

    @property
    def _n_features_out(self):
        """Number of output features (for ``get_feature_names_out``)."""
        return self.n_features_out_

    def transform(self, X):
        """Embeddings of images ``X``, float32 of shape ``(n_samples, D)``, L2-normalised."""
        check_is_fitted(self, "backbone_")
        images = as_images(X)
        try:
            return embed_images(self.backbone_, images, batch_size=self.batch_size,
                                device=distributed.setup(usable_device(self.device)),
                                verbose=self.verbose if distributed.is_main_process() else 0,
                                compile=check_compile(getattr(self, "compile", False)),
                                ).numpy()
        finally:
            self.backbone_.module.cpu()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags

