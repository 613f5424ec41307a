"""The scikit-learn transformer :class:`ImageEmbedder`: images in, embeddings out."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from . import distributed
from .embedding import embed_images
from .image_input import as_images
from .representation import learn_representation, plan_summary
from .settings import (
    PARAMETER_CONSTRAINTS,
    STAGE1_PARAMETERS,
    check_parameters,
    check_stage1,
    inference_device,
)

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
    :func:`spice_learn.cache_augment.feature_views`), not image augmentations; passing
    images straight to ``SpiceClustering`` keeps the image views of the paper.

    Parameters
    ----------
    backbone : str, torch.nn.Module or FeatureExtractor, default="auto"
    weights : None, "pretrained" or path-like, default=None
    pretrain : {"auto", "simclr"} or None, default="auto"
    pretrain_epochs : int or "auto", default="auto"
    pretrain_time : float, None or "auto", default="auto"
    small_stem : {"auto", True, False}, default="auto"
    flip : bool or "auto", default="auto"
    invariances : "auto", None or list of str, default="auto"
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
    plan_ : dict
        The stage-1 entries of :class:`~spice_learn.SpiceClustering`'s ``plan_``
        (backbone, input size, colour, epochs, SimCLR settings, ``invariances`` and
        ``invariance_scores``).
    n_features_out_ : int
        Embedding dimension ``D``.
    """

    def __init__(self, backbone="auto", *, weights=None, pretrain="auto", pretrain_epochs="auto",
                 pretrain_time="auto", small_stem="auto", flip="auto", invariances="auto",
                 batch_size=256,
                 device="auto", compile=False, random_state=None, verbose=0):
        self.backbone = backbone
        self.weights = weights
        self.pretrain = pretrain
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_time = pretrain_time
        self.small_stem = small_stem
        self.flip = flip
        self.invariances = invariances
        self.batch_size = batch_size
        self.device = device
        self.compile = compile
        self.random_state = random_state
        self.verbose = verbose

    _parameter_constraints = {
        **{name: PARAMETER_CONSTRAINTS[name] for name in STAGE1_PARAMETERS},
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def fit(self, X, y=None):
        """Build (and pretrain) the backbone on images ``X``; ``y`` is ignored."""
        if isinstance(self.backbone, str) and self.backbone == "precomputed":
            raise ValueError("backbone='precomputed' has no images to embed; pass a model.")
        params = self.get_params(deep=False)
        check_parameters(params, self._parameter_constraints)
        stage1, device = check_stage1(params)  # the estimator's checks and "auto" rules
        rng = check_random_state(self.random_state)
        build_seed, pretrain_seed = (int(s) for s in rng.randint(0, 2**31 - 1, size=2))
        images = as_images(X)
        device = distributed.setup(device)  # under torchrun: this process's GPU
        build_seed, pretrain_seed = distributed.broadcast_object([build_seed, pretrain_seed])
        extractor, history, _, plan = learn_representation(
            stage1.backbone, stage1.weights, images, pretrain=stage1.pretrain,
            small_stem=stage1.small_stem, flip=stage1.flip, build_seed=build_seed,
            pretrain_seed=pretrain_seed, device=device,
            verbose=self.verbose if distributed.is_main_process() else 0,
            max_epochs=stage1.pretrain_epochs, max_time=stage1.max_time,
            batch_size=stage1.batch_size, learning_rate=stage1.learning_rate,
            temperature=stage1.temperature, projection_dim=stage1.projection_dim,
            compile=stage1.compile, invariances=stage1.invariances,
        )
        extractor.module.cpu()
        self.backbone_ = extractor
        self.pretrain_history_ = np.asarray(history, dtype=float)
        self.plan_ = plan_summary(plan, extractor)
        self.n_features_out_ = int(extractor.feature_dim)
        return self

    @property
    def _n_features_out(self):
        """Number of output features (for ``get_feature_names_out``)."""
        return self.n_features_out_

    def transform(self, X):
        """Embeddings of images ``X``, float32 of shape ``(n_samples, D)``, L2-normalised."""
        check_is_fitted(self, "backbone_")
        return embed_images(self.backbone_, as_images(X), batch_size=self.batch_size,
                            device=inference_device(self.device),
                            verbose=self.verbose if distributed.is_main_process() else 0,
                            compile=bool(getattr(self, "compile", False)), shared=True).numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags

