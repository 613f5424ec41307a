"""The scikit-learn estimator :class:`SpiceClustering`: parameters, validation,
orchestration and fitted attributes. The torch work lives in the other modules."""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import distributed
from .augment import feature_views, strong_transform, weak_transform
from .backbones import FeatureExtractor, check_model_name
from .disk_cache import DiskArray, atomic_path, fingerprint
from .embedding import ViewCache, cache_nbytes, check_same_images, embed_images, embed_views
from .image_input import as_features, as_images
from .neighbors import nearest_neighbors, reliability_scores
from .pseudo_labels import cluster_prototypes, n_confident
from .representation import (
    estimate_seconds,
    learn_representation,
    plan_representation,
    resolve_flip,
    wants_pretraining,
)
from .spice_self import (
    default_batch_size,
    default_minibatch_size,
    head_probabilities,
    head_selection_losses,
    train_heads,
)
from .scan_heads import (
    SCAN_ENTROPY_WEIGHT,
    SCAN_NEIGHBORS,
    default_scan_epochs,
    default_scan_minibatch_size,
    scan_selection_losses,
    train_scan_heads,
)
from .spice_semi import finetune, train_semi_head
from .validation import (
    auto_int,
    auto_real,
    check_compile,
    check_int,
    check_n_jobs,
    check_real,
    check_writable_dir,
    resolve_device,
)
from .runtime import autocast_dtype, torch_threads, usable_device

__all__ = ["SpiceClustering"]

#: ``cache_dtype="auto"`` stores float16 once the float32 cache would exceed this.
AUTO_FLOAT16_BYTES = 1 << 30
#: ``n_weak_views``/``n_strong_views="auto"`` caches 4/16 views up to this many samples, else 2/4.
SMALL_DATA_SIZE = 5_000
#: ``score`` builds prototypes with this fixed ``r`` (the paper's value), so that models
#: with different ``confidence_ratio`` are judged by the same criterion.
SCORE_CONFIDENCE_RATIO = 0.5
#: ``max_epochs="auto"`` with ``head_objective="spice"`` (the paper's 100 epochs).
SPICE_HEAD_EPOCHS = 100
#: ``semi_learning_rate="auto"``: Adam for the "head" mode, SGD (FixMatch) for "finetune".
SEMI_LEARNING_RATES = {"head": 1e-3, "finetune": 0.03}
#: ``learning_rate="auto"``: the official SPICE-Self value, and Adam's usual 1e-3 for SCAN heads.
HEAD_LEARNING_RATES = {"spice": 5e-3, "scan": 1e-3}
#: Part of the ``cache_dir`` file names: change it when the same images, weights
#: and settings would give other embeddings (new augmentations, preprocessing).
VIEW_CACHE_FORMAT = 1


class SpiceClustering(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin,
                      BaseEstimator):
    """Image clustering with SPICE (Niu & Wang, "SPICE: Semantic Pseudo-labeling
    for Image Clustering").

    Stage 1 (when the backbone has no pretrained weights): contrastive
    pretraining of the backbone on ``X``. SPICE-Self: the frozen backbone embeds
    every image once per cached view (the original, ``n_weak_views`` weak and
    ``n_strong_views`` strong augmentations); ``n_heads`` light MLP heads are
    trained together with semantic pseudo-labels and double-softmax
    cross-entropy (Algorithm 1 of the paper), and the head with the lowest loss
    over the whole data set is kept. SPICE-Semi (``semi``): samples whose
    neighbours agree with their cluster become labelled data for a FixMatch
    refinement. Labels are never used.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters ``k`` (at most the number of samples; 1 is accepted and
        puts every sample in cluster 0).
    backbone : str, torch.nn.Module or FeatureExtractor, default="auto"
        A timm model name; ``"auto"`` (on the CPU: ``"spice_convnet4"`` at 16 px
        for any image size, larger images being downsampled to it; on CUDA:
        ``"spice_convnet4"`` for images of at most 28 px, else ``"resnet18"``; see
        :mod:`spice_learn.representation`); a module mapping normalised ``(B, 3, H, W)``
        images to ``(B, D)`` features; the ``backbone_`` of a fitted model, to
        reuse its (pretrained) backbone with other head settings; or
        ``"precomputed"``: ``X`` is then a 2-D feature matrix and the views are
        feature-space augmentations (see :func:`spice_learn.augment.feature_views`).
    weights : None, "pretrained" or path-like, default=None
        Backbone weights: random initialisation (None), timm's pretrained zoo
        (``"pretrained"``, needs a network or a filled Hugging Face cache; fails
        fast otherwise) or a local timm/torchvision state dict file.
    pretrain : {"auto", "simclr"} or None, default="auto"
        Stage 1: self-supervised SimCLR training of the backbone on ``X`` itself
        (see :mod:`spice_learn.pretrain`). "auto" pretrains exactly when the
        backbone is a timm name with ``weights=None`` (random weights); None
        never pretrains; "simclr" always does (fine-tuning given weights).
    pretrain_epochs : int or "auto", default="auto"
        Pretraining epochs (the cosine schedule spans them). "auto": 100 on CUDA;
        on the CPU ``40 * sqrt(10,000 / n_samples)`` clipped to 15-60, so that
        stage 1 ends in minutes (:func:`spice_learn.representation.default_pretrain_epochs`).
        The resolved value is in ``plan_``.
    pretrain_time : float or None, default=None
        Wall-clock budget for pretraining in seconds (None: no budget). With a
        budget, the number of steps and the learning-rate schedule depend on the
        machine's speed, so a fixed ``random_state`` no longer gives identical
        weights from run to run.
    pretrain_batch_size : int or "auto", default="auto"
        Images per pretraining step (two views each).
    pretrain_learning_rate : float or "auto", default="auto"
        Peak AdamW learning rate of pretraining.
    temperature : float or "auto", default="auto"
        NT-Xent temperature. "auto" for these three depends on whether the
        images have colour (:func:`spice_learn.representation.default_simclr_settings`):
        grayscale images get batch 256, 1e-3 and 0.5, colour images batch 128,
        4e-3 and 0.2. In our probes (16 px, minutes on a CPU) the first was
        better on digits and USPS (USPS, 41 epochs: 0.978 against 0.921 ACC after
        SPICE-Semi), the second on random-colour shapes (kNN accuracy of the
        embedding 0.44 against 0.39 at the same cost).
    projection_dim : int, default=128
        Output size of the SimCLR projection head.
    small_stem : {"auto", True, False}, default="auto"
        For images of at most 64 px and ResNet-like models, remove the stem's
        downsampling (the CIFAR stem of SCAN/SPICE) instead of resizing the
        images to 224 px. ``"auto"`` does it for small images.
    n_heads : int, default=10
        Number of heads trained together; the best one is selected without labels.
    head_objective : {"scan", "spice"}, default="scan"
        What the heads learn from on the frozen embeddings. "spice": SPICE-Self's
        prototype pseudo-labels and double-softmax cross-entropy (paper Algorithm
        1); the head with the lowest DS-CE is kept. "scan" (beyond SPICE): SCAN's
        neighbour consistency: each sample and one of its 20 nearest neighbours
        should get the same confident prediction, plus an entropy term that keeps
        every cluster in use; the head with the lowest SCAN loss is kept (see
        :mod:`spice_learn.scan_heads`). SPICE-Semi runs on either.
    hidden_dim : int or None, default=None
        Hidden width of each head; None uses the feature dimension ``D`` (paper).
    batch_size : int or "auto", default="auto"
        ``M``, samples per pseudo-labelling step ("spice" heads); "auto" follows
        the paper (1000 for 10 clusters, 100 per cluster, at most 5000).
    minibatch_size : int or "auto", default="auto"
        ``m2``, samples per gradient step; "auto" is 128 (256 for >= 100
        clusters) for "spice" heads and ``n_samples // 8`` clipped to 16-256 for
        "scan" heads (at least 8 steps an epoch on small data sets).
    max_epochs : int or "auto", default="auto"
        Passes over the data while training the heads; "auto" is 100 for
        "spice" heads and ``150,000 / n_samples`` clipped to 5-100 for "scan".
    learning_rate : float or "auto", default="auto"
        Adam learning rate of the heads; "auto" is 5e-3 for "spice" (the official
        SPICE configuration) and 1e-3 for "scan".
    confidence_ratio : float, default=0.5
        ``r``: share of ``M / k`` most confident samples that form each prototype.
    entropy_weight : float or "auto", default="auto"
        Weight of an entropy term on the mean prediction that keeps clusters from
        emptying; "auto" is SCAN's 5 for "scan" heads, and for "spice" heads 0
        below 50 clusters and 1 from 50 on. With "scan" heads, lower it for
        strongly imbalanced data: 5 pushes clusters towards equal sizes (on the
        imbalanced USPS, one seed, the selected head scored 0.919 ACC with 5, 0.933
        with 2 and 0.983 with 1; on digits 0.946, 0.948 and 0.950), but with 1
        close clusters of small data sets can merge (fewer than ``k`` in use).
    n_weak_views, n_strong_views : int or "auto", default="auto"
        "auto": 4 weak and 16 strong views for up to 5,000 samples (cheap to
        embed, and the SPICE-Semi head has more views to learn from; an earlier
        single-machine comparison on digits favoured 4/16 over 2/4, but no script
        in ``benchmarks/`` reproduces it yet), else 2 and 4.
        Augmented views cached per image. Each costs one backbone pass per image
        and ``D`` floats of memory per image (see ``cache_dtype``).
    flip : bool or "auto", default="auto"
        Whether augmentations flip images horizontally. "auto" flips when the
        network input is larger than 20 px (natural images) and not for smaller
        inputs (digits, characters, icons, where a mirror image is another symbol).
    cache_dtype : {"auto", "float32", "float16"}, default="auto"
        Storage of cached embeddings: ``4 * D`` (float32) or ``2 * D`` (float16)
        bytes per image and view; "auto" switches to float16 when the float32
        cache would exceed 1 GiB.
    embed_batch_size : int, default=256
        Images per backbone forward pass. On a CUDA out-of-memory error the
        batch is halved and the pass goes on (with a warning); pretraining does
        the same with ``pretrain_batch_size``.
    checkpoint_dir : path-like or None, default=None
        Folder where pretraining saves its state after every epoch, in
        ``pretrain-<fingerprint>.pt`` (a digest of images, starting weights,
        settings and seed). A later ``fit`` with the same fingerprint resumes
        from it (or skips finished pretraining); on the CPU without
        ``pretrain_time`` the result equals an uninterrupted run. Fits with
        other data or settings (e.g. GridSearchCV folds) use other files.
    cache_dir : path-like or None, default=None
        Folder for the embeddings of all cached views (None: they stay in
        memory). They are written to ``views-<fingerprint>.npy``, a digest of the
        images, the backbone weights (after pretraining), the view settings,
        ``embed_batch_size`` (augmentations are drawn per batch), the seed and
        the storage type, and a later ``fit`` with the same
        fingerprint reads them instead of embedding again. The file appears
        only once complete (an interrupted fit leaves none). The heads then
        read their minibatches from the file, so the memory of the cache does
        not grow with ``N`` during head training; head selection, the
        neighbour search and the prototypes still hold the original view,
        ``N x D`` values, in memory. Files are never deleted. The key
        includes the seed, so only fits with an int ``random_state`` reuse a
        file (``random_state=None`` warns). Under torchrun only rank 0 writes
        the file, which must be in a folder every process sees; embedding
        gathers every view of every image in each process's memory, and after
        a miss the other processes keep that copy, so ``cache_dir`` bounds the
        memory of a single process only.
    n_jobs : int or None, default=None
        Torch CPU threads during ``fit``, ``predict``, ``transform`` and
        ``score`` (-1: all cores; None: leave torch's setting alone).
    semi : {"head", "finetune"} or None, default="head"
        SPICE-Semi (paper section 3.3): after SPICE-Self, samples whose
        neighbourhood agrees with their cluster become labelled data for a
        FixMatch-style refinement. "head" trains a fresh classifier on the
        cached view embeddings (seconds on a CPU; its gain on each benchmark
        data set is in docs/benchmarks.md); "finetune" trains backbone and head end to end on
        augmented images (the paper's setting; meant for a GPU); None keeps the
        SPICE-Self clustering.
    n_neighbors : int or "auto", default="auto"
        ``n_s``: neighbours (cosine, on the original embeddings) that vote on each
        sample's reliability; clipped to ``n_samples // n_clusters - 1`` (a
        neighbourhood larger than an average cluster cannot agree with it).
        "auto": the paper's 100, but at most a sixth of the average cluster,
        ``min(100, n_samples // (6 * n_clusters))``. On CIFAR-10 (5,000 images
        a class) 100 neighbours are 2 % of a class; on sklearn digits (180 a
        class) they would be more than half of it, and the sparse classes
        would get no reliable sample at all.
    reliability_threshold : float, default=0.95
        ``tau_c``: a sample is reliable when at least this share of its
        neighbours has its SPICE-Self cluster.
    semi_threshold : float, default=0.95
        ``tau``: unlabelled samples count only when their weak-view confidence
        reaches this.
    semi_steps : int, default=1000
        Gradient steps of each SPICE-Semi round.
    semi_rounds : int, default=2
        SPICE-Semi rounds. The paper runs one; each further round estimates
        the reliable samples again from the previous round's clusters and
        trains again on them (self-training: a fresh classifier in the "head"
        mode; the same backbone and classifier go on in "finetune").
        ``benchmarks/run_semi_rounds.py`` compares 1 and 2 rounds on the same
        features.
        Rounds stop early when no sample is reliable.
    semi_time : float or None, default=None
        Wall-clock budget of each SPICE-Semi round in seconds (None: no budget).
    semi_batch_size : int, default=64
        ``B``, reliable samples per step.
    semi_mu : int, default=7
        ``mu``, unlabelled samples per reliable sample in a step.
    semi_learning_rate : float or "auto", default="auto"
        "auto": 1e-3 (Adam) for "head", 0.03 (SGD with Nesterov momentum, as
        FixMatch) for "finetune".
    ema_decay : float, default=0.999
        "finetune" only: the model kept is an exponential moving average of
        the weights with this decay (0: the last weights).
    device : str or torch.device, default="auto"
        "auto" uses CUDA when available, else the CPU.
    compile : bool, default=False
        Run the backbone through :func:`torch.compile` in pretraining,
        embedding and "finetune" (and ``predict``/``transform``/``score``).
        Meant for long GPU runs: the first batches of each stage pay the
        compilation (tens of seconds, counted in ``pretrain_time`` and
        ``semi_time``); on the CPU compiling needs a C++ compiler. Under
        torchrun it is ignored, with a warning (not tested there yet).
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, augmentation and sampling.
    verbose : int, default=0
        0: silent; 1 or more: tqdm progress bars (pretraining with its loss per
        epoch, embedding, SPICE-Self, SPICE-Semi) and one line per finished stage
        on standard error.

    Notes
    -----
    With ``backbone="precomputed"`` the image-only parameters (``weights``,
    ``pretrain*``, ``temperature``, ``projection_dim``, ``small_stem``, ``flip``,
    ``cache_dtype``, ``embed_batch_size`` and ``cache_dir``) have no effect. ``labels_`` and
    ``predict`` use the selected head on the original (unaugmented) images, as in
    line 27 of Algorithm 1; pseudo-labelling and head selection use weak views.

    Under torchrun every process must call ``fit``, ``predict``,
    ``predict_proba``, ``transform`` and ``score`` together and with the same
    ``X`` (the processes share the embedding work): ValueError is raised in
    every process when the images differ, and a call from one process alone
    waits for the others.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample.
    backbone_ : FeatureExtractor or None
        The (possibly pretrained, and with ``semi="finetune"`` fine-tuned) backbone and its preprocessing (None when
        precomputed). Pass it as ``backbone=`` to a new estimator to reuse it.
    pretrain_history_ : ndarray of shape (n_pretrain_epochs,)
        Mean NT-Xent loss per pretraining epoch (empty without pretraining).
    heads_ : MultiHeadClassifier
        All trained heads (on the CPU).
    classifier_ : MultiHeadClassifier
        The classifier ``predict`` uses: the SPICE-Semi classifier, or the
        selected SPICE-Self head when ``semi=None`` (or no sample was reliable).
    head_losses_ : ndarray of shape (n_heads,)
        DS-CE of each head over the whole training set (lower is better).
    best_head_ : int
        Index of the selected head, ``argmin(head_losses_)``.
    loss_history_ : ndarray of shape (max_epochs, n_heads)
        Mean training loss per epoch and head (DS-CE, plus the entropy term when
        it is on).
    self_labels_ : ndarray of shape (n_samples,)
        SPICE-Self cluster of each training sample (before SPICE-Semi; equal to
        ``labels_`` when ``semi=None``).
    reliability_ : ndarray of shape (n_samples,) or None
        Share of each sample's ``n_neighbors`` neighbours in its cluster at the
        start of the last SPICE-Semi round (the SPICE-Self cluster in the first
        round; None when ``semi=None``).
    reliable_mask_ : ndarray of shape (n_samples,), bool, or None
        ``reliability_ >= reliability_threshold``: the training samples the
        model is confident about (useful to clean a data set).
    n_neighbors_ : int or None
        The number of neighbours SPICE-Semi's reliability used (``n_neighbors``
        resolved for this data set; None when ``semi=None``).
    semi_history_ : ndarray of shape (n_steps, 3) or None
        Per SPICE-Semi step, all rounds one after the other: supervised loss, unlabelled loss and share of
        unlabelled samples above ``semi_threshold``.
    cluster_centers_ : ndarray of shape (n_clusters, D)
        Prototypes of the selected head over the training set (Eq. 2), in the
        L2-normalised embedding space (not the input space as in KMeans).
    n_features_in_ : int
        Number of features (``backbone="precomputed"`` only).
    plan_ : dict
        What the "auto" settings resolved to for this data and device:
        ``backbone``, ``input_size`` (what the network saw), ``colour`` (whether
        the images have colour), ``pretrain_epochs``, ``pretrain_batch_size``,
        ``pretrain_learning_rate``, ``temperature``, ``n_weak_views``,
        ``n_strong_views``, ``head_objective``, ``head_epochs`` and
        ``estimated_seconds`` (stage 1 and the view cache on 2 CPU cores; None
        without a cost model). At ``verbose >= 1`` the plan is printed before
        the long work starts.

    Examples
    --------
    >>> import numpy as np
    >>> from spice_learn import SpiceClustering
    >>> X = np.random.default_rng(0).normal(size=(60, 8))
    >>> X[:30] += 5
    >>> model = SpiceClustering(2, backbone="precomputed", max_epochs=5, random_state=0)
    >>> model.fit_predict(X).shape
    (60,)
    """

    def __init__(
        self, n_clusters=10, *, backbone="auto", weights=None, pretrain="auto",
        pretrain_epochs="auto", pretrain_time=None, pretrain_batch_size="auto",
        pretrain_learning_rate="auto", temperature="auto", projection_dim=128, small_stem="auto",
        n_heads=10, head_objective="scan",
        hidden_dim=None, batch_size="auto", minibatch_size="auto", max_epochs="auto",
        learning_rate="auto", confidence_ratio=0.5, entropy_weight="auto", n_weak_views="auto",
        n_strong_views="auto", flip="auto", cache_dtype="auto", embed_batch_size=256,
        checkpoint_dir=None, cache_dir=None, n_jobs=None,
        semi="head", n_neighbors="auto", reliability_threshold=0.95, semi_threshold=0.95,
        semi_steps=1000, semi_rounds=2, semi_time=None, semi_batch_size=64, semi_mu=7,
        semi_learning_rate="auto", ema_decay=0.999, device="auto", compile=False,
        random_state=None, verbose=0,
    ):
        self.n_clusters = n_clusters
        self.backbone = backbone
        self.weights = weights
        self.pretrain = pretrain
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_time = pretrain_time
        self.pretrain_batch_size = pretrain_batch_size
        self.pretrain_learning_rate = pretrain_learning_rate
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.small_stem = small_stem
        self.n_heads = n_heads
        self.head_objective = head_objective
        self.hidden_dim = hidden_dim
        self.batch_size = batch_size
        self.minibatch_size = minibatch_size
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.confidence_ratio = confidence_ratio
        self.entropy_weight = entropy_weight
        self.n_weak_views = n_weak_views
        self.n_strong_views = n_strong_views
        self.flip = flip
        self.cache_dtype = cache_dtype
        self.embed_batch_size = embed_batch_size
        self.checkpoint_dir = checkpoint_dir
        self.cache_dir = cache_dir
        self.n_jobs = n_jobs
        self.semi = semi
        self.n_neighbors = n_neighbors
        self.reliability_threshold = reliability_threshold
        self.semi_threshold = semi_threshold
        self.semi_steps = semi_steps
        self.semi_rounds = semi_rounds
        self.semi_time = semi_time
        self.semi_batch_size = semi_batch_size
        self.semi_mu = semi_mu
        self.semi_learning_rate = semi_learning_rate
        self.ema_decay = ema_decay
        self.device = device
        self.compile = compile
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Cluster ``X``.

        Parameters
        ----------
        X : images or features
            Any input accepted by :func:`spice_learn.image_input.as_images`
            (arrays NHW/NHWC/NCHW, tensors, PIL images, file paths, a directory),
            or a 2-D feature matrix with ``backbone="precomputed"``. Under
            torchrun, the same images in every process.
        y : ignored
            Present for API consistency; labels are never used.

        Returns
        -------
        self : SpiceClustering
            The fitted estimator. Nothing is changed when ``fit`` raises.
        """
        with torch_threads(check_n_jobs(self.n_jobs)):
            return self._fit(X)

    def _fit(self, X):
        params = self._check_params()
        try:
            rng = check_random_state(self.random_state)
        except ValueError:
            raise ValueError(
                "random_state must be None, an int or a numpy RandomState; got "
                f"{self.random_state!r}."
            ) from None
        # Under torchrun: join the process group, one GPU per process, rank 0's seeds
        # (random_state=None would draw other ones in each process), rank 0 reports.
        device = params["device"] = distributed.setup(params["device"])
        _check_world_size(params, params["pretrain_batch_size"], self.semi_batch_size)
        seeds = distributed.broadcast_object(
            [int(s) for s in rng.randint(0, 2**31 - 1, size=5)])
        verbose = self.verbose if distributed.is_main_process() else 0
        precomputed = isinstance(self.backbone, str) and self.backbone == "precomputed"
        if self.cache_dir is not None and self.random_state is None and not precomputed:
            warnings.warn("cache_dir with random_state=None: the cache key includes the seed, "
                          "so this fit writes a file that no later fit reads; set "
                          "random_state to reuse the cache.", UserWarning, stacklevel=3)

        start = time.perf_counter()

        def log(message):
            if verbose > 0:
                print(f"[SpiceClustering {time.perf_counter() - start:7.1f} s] {message}",
                      file=sys.stderr, flush=True)

        pretrain_history = []
        if precomputed:
            features = torch.from_numpy(as_features(X))
            self._check_n_samples(features.shape[0])
            _resolve_views(params, features.shape[0])
            _resolve_neighbors(params, features.shape[0], self.n_clusters)
            extractor = images = flip = None
            cache = _feature_cache(features, params, seeds[0])
            plan, estimate = None, None
        else:
            images = as_images(X)
            self._check_n_samples(images.shape[0])
            _resolve_views(params, images.shape[0])
            _resolve_neighbors(params, images.shape[0], self.n_clusters)
            plan = plan_representation(
                self.backbone, images, pretrain=params["pretrain"], device=device,
                pretrain_epochs=params["pretrain_epochs"],
                batch_size=params["pretrain_batch_size"],
                learning_rate=params["pretrain_learning_rate"], temperature=params["temperature"])
            n_views = 1 + params["n_weak_views"] + params["n_strong_views"]
            estimate = estimate_seconds(plan, images.shape[0], n_views)
            size = "its own input size" if plan.input_size is None else \
                "x".join(str(s) for s in plan.input_size) + " px"
            log(f"plan: {plan.backbone} at {size} "
                f"({'colour' if plan.colour else 'grayscale'} images), "
                f"{plan.pretrain_epochs} SimCLR epochs, {n_views} cached views per image"
                + ("" if estimate is None or device.type != "cpu" else
                   f"; stage 1 and the views take about {estimate / 60:.1f} min on 2 CPU cores"))
            extractor, pretrain_history, flip = learn_representation(
                self.backbone, self.weights, images, pretrain=params["pretrain"],
                small_stem=self.small_stem, flip=self.flip, build_seed=seeds[0],
                pretrain_seed=seeds[3], device=device, verbose=verbose, plan=plan,
                max_time=self.pretrain_time,
                batch_size=params["pretrain_batch_size"],
                learning_rate=params["pretrain_learning_rate"],
                temperature=params["temperature"], projection_dim=self.projection_dim,
                checkpoint_dir=self.checkpoint_dir, compile=params["compile"],
            )
            if params["pretrain"]:
                log(f"stage 1: {len(pretrain_history)} SimCLR epochs on "
                    f"{images.shape[0]} images, final loss {pretrain_history[-1]:.4f}")
            cache, embedded = _image_cache(extractor, images, params, flip, seeds[1],
                                           verbose, cache_dir=self.cache_dir)
            n_views = 1 + params["n_weak_views"] + params["n_strong_views"]
            done = "embedded" if embedded else "read from cache_dir the embeddings of"
            log(f"{done} {images.shape[0]} images x {n_views} views with {extractor.name}")

        k = self.n_clusters
        n_samples = cache.n_samples
        features = cache.original[:]  # whole-data steps below need all of it
        neighbors = None
        if self.head_objective == "scan":
            # One search serves SCAN and SPICE-Semi's reliability (sorted: slices agree).
            n_scan = max(1, min(SCAN_NEIGHBORS, n_samples // k - 1))
            n_search = max(n_scan, params["n_neighbors"] if params["semi"] else 0)
            neighbors = nearest_neighbors(features, n_search, device=device)
            max_epochs = params["max_epochs"] or default_scan_epochs(n_samples)
            heads, history = train_scan_heads(
                cache, neighbors[:, :n_scan], n_clusters=k, n_heads=self.n_heads,
                hidden_dim=self.hidden_dim or cache.original.shape[1],
                minibatch_size=params["minibatch_size"] or default_scan_minibatch_size(n_samples),
                max_epochs=max_epochs,
                learning_rate=params["learning_rate"], entropy_weight=params["entropy_weight"],
                seed=seeds[2], device=device, verbose=verbose,
            )
            distributed.broadcast_module(heads)
            losses = scan_selection_losses(heads, cache, neighbors[:, :n_scan],
                                           entropy_weight=params["entropy_weight"])
        else:
            heads, history = train_heads(
                cache, n_clusters=k, n_heads=self.n_heads,
                hidden_dim=self.hidden_dim or cache.original.shape[1],
                batch_size=params["batch_size"], minibatch_size=params["minibatch_size"],
                max_epochs=params["max_epochs"] or SPICE_HEAD_EPOCHS,
                learning_rate=params["learning_rate"], confidence_ratio=self.confidence_ratio,
                entropy_weight=params["entropy_weight"], seed=seeds[2], device=device,
                verbose=verbose,
            )
            distributed.broadcast_module(heads)  # identical on every process, whatever the GPU
            losses = head_selection_losses(heads, cache, confidence_ratio=self.confidence_ratio)
        # Under torchrun rank 0 decides (GPUs need not agree to the last bit).
        losses = distributed.broadcast_object(losses)
        best = int(np.argmin(losses))
        classifier = heads.select([best])
        probs = head_probabilities(classifier, features)
        self_labels = distributed.broadcast_object(probs[0].argmax(dim=1).cpu().numpy())
        name = "SCAN" if self.head_objective == "scan" else "DS-CE"
        log(f"SPICE-Self ({self.head_objective} heads): selected head {best} of {self.n_heads} "
            f"({name} {losses[best]:.4f}; all heads {losses.min():.4f}-{losses.max():.4f})")

        reliability = reliable = semi_history = None
        if params["semi"] is not None:
            classifier, features, reliability, reliable, semi_history = self._semi(
                params, cache, features, classifier, extractor, images, self_labels, flip,
                seeds[4], verbose, log, neighbors=neighbors,
            )
            probs = head_probabilities(classifier, features)
        n_top = n_confident(cache.n_samples, k, self.confidence_ratio)
        centers = cluster_prototypes(features.to(probs.device).float(), probs, n_top)[0]

        # Everything succeeded: only now touch the estimator's state.
        if extractor is not None:
            extractor.module.cpu()
        self.backbone_ = extractor
        self.pretrain_history_ = np.asarray(pretrain_history, dtype=float)
        self.heads_ = heads.cpu()
        self.classifier_ = classifier.cpu()
        self.head_losses_ = losses
        self.best_head_ = best
        self.loss_history_ = history
        self.cluster_centers_ = centers.cpu().numpy()
        self.labels_ = probs[0].argmax(dim=1).cpu().numpy()
        self.self_labels_ = self_labels
        self.reliability_ = reliability
        self.reliable_mask_ = reliable
        self.semi_history_ = semi_history
        self.n_neighbors_ = params["n_neighbors"] if params["semi"] is not None else None
        self.plan_ = {
            "backbone": None if plan is None else plan.backbone,
            "input_size": None if extractor is None else tuple(extractor.input_size),
            "colour": None if plan is None else plan.colour,
            "pretrain_epochs": len(pretrain_history) if plan is None else plan.pretrain_epochs,
            "pretrain_batch_size": None if plan is None else plan.batch_size,
            "pretrain_learning_rate": None if plan is None else plan.learning_rate,
            "temperature": None if plan is None else plan.temperature,
            "n_weak_views": params["n_weak_views"], "n_strong_views": params["n_strong_views"],
            "head_objective": self.head_objective, "head_epochs": int(history.shape[0]),
            "estimated_seconds": estimate,
        }
        n_used = len(np.unique(self.labels_))
        if n_used < k:
            warnings.warn(
                f"{k - n_used} of the n_clusters={k} clusters are empty: no training sample "
                "is assigned to them. The data may hold fewer groups than asked for, or "
                "the embedding does not separate them; try head_objective='scan' (its "
                "entropy term keeps clusters in use) or fewer clusters.", UserWarning,
                stacklevel=3)
        if precomputed:
            self.n_features_in_ = int(features.shape[1])
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_
        return self

    # -------------------------------------------------------- score/transform
    def transform(self, X):
        """Embeddings of ``X`` in the space of ``cluster_centers_``.

        Parameters
        ----------
        X : images or features
            Under torchrun, the same images in every process (see Notes).

        Returns
        -------
        embeddings : ndarray of shape (n_samples, D)
            L2-normalised backbone embeddings (normalised features when
            precomputed); ``embeddings @ cluster_centers_.T`` are cosine-like
            similarities to the prototypes.
        """
        check_is_fitted(self, "classifier_")
        with torch_threads(check_n_jobs(self.n_jobs)):
            return self._embed(X).numpy()

    @property
    def _n_features_out(self):
        """Number of output features of ``transform`` (for ``get_feature_names_out``)."""
        return self.cluster_centers_.shape[1]

    def score(self, X, y=None):
        """Label-free quality of the clustering of ``X``: higher is better.

        The selected classifier's double-softmax cross-entropy on ``X``
        (SPICE-Self's head-selection criterion with ``M = N``: predictions on a
        weak view, prototype pseudo-labels, DS-CE on a strong view), rescaled to
        ``1 - (L - L_min) / (log k - L_min)`` (prototypes from the top half,
        ``r = 0.5``, whatever ``confidence_ratio`` is): 1 when every pseudo-labelled
        sample gets a one-hot prediction of its label (``L_min = log(e + k - 1) - 1``),
        0 for uniform predictions. The rescaling makes models with different
        ``n_clusters`` comparable. ``y`` is ignored: ``GridSearchCV`` can tune
        without labels.

        Parameters
        ----------
        X : images or features
        y : ignored

        Returns
        -------
        score : float
        """
        check_is_fitted(self, "classifier_")
        with torch_threads(check_n_jobs(self.n_jobs)):
            return self._score(X)

    def _score(self, X):
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        params = {"n_weak_views": 1, "n_strong_views": 1, "cache_dtype": "float32",
                  "embed_batch_size": self.embed_batch_size,
                  "device": distributed.setup(usable_device(self.device)),
                  "compile": check_compile(getattr(self, "compile", False))}
        if self.backbone_ is None:
            features = torch.from_numpy(self._check_features(X))
            cache = _feature_cache(features, params, seed)
        else:
            flip = resolve_flip(self.flip, self.backbone_)
            try:
                cache, _ = _image_cache(self.backbone_, as_images(X), params, flip, seed, 0)
            finally:
                self.backbone_.module.cpu()
        loss = float(head_selection_losses(self.classifier_, cache,
                                           confidence_ratio=SCORE_CONFIDENCE_RATIO)[0])
        k = self.n_clusters
        if k == 1:  # one cluster: every prediction is trivially one-hot
            return 1.0
        best = np.log(np.e + k - 1) - 1
        return 1.0 - (loss - best) / (np.log(k) - best)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # embeddings are float32
        return tags

    def _semi(self, params, cache, features, classifier, extractor, images, labels, flip, seed,
              verbose, log, neighbors=None):
        """SPICE-Semi rounds after SPICE-Self.

        Each round scores every sample's reliability against the current
        clusters, refines the classifier on the reliable ones (:meth:`_refine`)
        and hands its clusters to the next round. A round that leaves a
        non-empty cluster empty is undone and ends SPICE-Semi (a label-free
        check: ``n_clusters`` is the user's choice). Returns the classifier, the
        embeddings it was trained for, the last round's reliability scores and
        mask (None when no round ran) and the concatenated step history.
        """
        n_s = params["n_neighbors"]  # resolved by _resolve_neighbors
        if neighbors is not None:  # searched before (sorted by similarity): keep the n_s nearest
            neighbors = neighbors[:, :n_s]
        reliability = reliable = None
        histories = []
        for round_ in range(self.semi_rounds):
            kept = ("the SPICE-Self clustering is kept" if round_ == 0 else
                    f"the clustering of round {round_} is kept")
            if neighbors is None:
                neighbors = nearest_neighbors(features, n_s, device=params["device"])
            scores = distributed.broadcast_object(reliability_scores(neighbors, labels))
            mask = scores >= self.reliability_threshold
            if round_ == 0:  # reported even when the round is not used
                reliability, reliable = scores, mask
            if not mask.any():
                warnings.warn(
                    f"SPICE-Semi round {round_ + 1}: no sample has a reliability of at least "
                    f"reliability_threshold={self.reliability_threshold} among its {n_s} "
                    f"neighbours; {kept}.", UserWarning, stacklevel=4,
                )
                break
            saved = None
            if params["semi"] == "finetune":  # trained in place: keep a copy to go back to
                saved = [{name: v.clone() for name, v in m.state_dict().items()}
                         for m in (extractor.module, classifier)]
            new_classifier, history = self._refine(
                params, cache, classifier, extractor, images, labels, mask, flip,
                seed + round_, verbose,
            )
            new_features = features
            if saved is not None:  # the backbone changed: embed again, search again
                new_features = embed_images(extractor, images, batch_size=self.embed_batch_size,
                                            device=params["device"], verbose=verbose,
                                            compile=params["compile"])
                neighbors = None  # (an undone round ends the loop, so this is never stale)
            new_labels = distributed.broadcast_object(
                head_probabilities(new_classifier, new_features)[0].argmax(dim=1).cpu().numpy())
            before, after = len(np.unique(labels)), len(np.unique(new_labels))
            if after < before:  # a label-free sign that the round went wrong
                warnings.warn(
                    f"SPICE-Semi round {round_ + 1} emptied {before - after} of the {before} "
                    f"clusters it started from; {kept}.", UserWarning, stacklevel=4,
                )
                if saved is not None:
                    extractor.module.load_state_dict(saved[0])
                    classifier.load_state_dict(saved[1])
                break
            log(f"SPICE-Semi ({params['semi']}) round {round_ + 1}: {mask.mean():.1%} "
                f"reliable samples ({n_s} neighbours), {len(history)} steps, "
                f"{(new_labels != labels).mean():.1%} of the labels changed")
            classifier, features, labels = new_classifier, new_features, new_labels
            reliability, reliable = scores, mask
            histories.append(history)
        history = np.concatenate(histories) if histories else None
        return classifier, features, reliability, reliable, history

    def _refine(self, params, cache, classifier, extractor, images, labels, reliable, flip,
                seed, verbose):
        """SPICE-Semi: returns the refined one-head classifier and its history.

        Under torchrun the "head" mode runs in every process on the same cache
        and seed, and rank 0's result is broadcast (GPUs need not compute
        bit-identical results); "finetune" is trained in DistributedDataParallel.
        """
        common = dict(
            n_steps=self.semi_steps, batch_size=self.semi_batch_size, mu=self.semi_mu,
            threshold=self.semi_threshold, learning_rate=params["semi_learning_rate"],
            seed=seed, device=params["device"], max_time=self.semi_time, verbose=verbose,
        )
        if params["semi"] == "head":
            head, history = train_semi_head(
                cache, labels, reliable, n_clusters=self.n_clusters,
                hidden_dim=self.hidden_dim or cache.original.shape[1], **common,
            )
            return distributed.broadcast_module(head), history
        history = finetune(extractor, classifier, images, labels, reliable,
                           ema_decay=self.ema_decay, flip=flip, compile=params["compile"],
                           **common)
        return classifier, history

    # -------------------------------------------------------------- predict
    def predict_proba(self, X):
        """Cluster probabilities of the selected head.

        Parameters
        ----------
        X : images or features
            Same kind of input as in ``fit``; images may have another size.
            Under torchrun, the same images in every process (see Notes).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters)
        """
        check_is_fitted(self, "classifier_")
        with torch_threads(check_n_jobs(self.n_jobs)):
            features = self._embed(X)
            return head_probabilities(self.classifier_, features)[0].cpu().numpy()

    def predict(self, X):
        """Cluster of each sample (argmax of :meth:`predict_proba`).

        Parameters
        ----------
        X : images or features

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.predict_proba(X).argmax(axis=1)

    def _embed(self, X):
        if self.backbone_ is None:
            return F.normalize(torch.from_numpy(self._check_features(X)), dim=1)
        images = as_images(X)
        device = distributed.setup(usable_device(self.device))
        try:
            return embed_images(
                self.backbone_, images, batch_size=self.embed_batch_size, device=device,
                verbose=self.verbose if distributed.is_main_process() else 0,
                compile=check_compile(getattr(self, "compile", False)),
            )
        finally:
            self.backbone_.module.cpu()

    def _check_features(self, X):
        features = as_features(X)
        if features.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {features.shape[1]} features, but SpiceClustering is expecting "
                f"{self.n_features_in_} features as input."
            )
        return features

    # ----------------------------------------------------------- validation
    def _check_n_samples(self, n_samples):
        if n_samples < 2:
            raise ValueError(
                f"X must hold at least 2 samples to cluster; got n_samples={n_samples}."
            )
        if self.n_clusters > n_samples:
            raise ValueError(
                f"n_clusters={self.n_clusters} must be <= n_samples={n_samples}."
            )

    def _check_params(self):
        """Validate every parameter; return the resolved "auto" values."""
        check_int(self.n_clusters, "n_clusters", 1)
        check_int(self.n_heads, "n_heads", 1)
        if self.hidden_dim is not None:
            check_int(self.hidden_dim, "hidden_dim", 1)
        if self.head_objective not in ("scan", "spice"):
            raise ValueError(
                f"head_objective must be 'scan' or 'spice'; got {self.head_objective!r}.")
        scan = self.head_objective == "scan"
        max_epochs = auto_int(self.max_epochs, "max_epochs", None, 1)  # None: set from N
        check_int(self.embed_batch_size, "embed_batch_size", 1)
        check_int(self.verbose, "verbose", 0)
        learning_rate = auto_real(self.learning_rate, "learning_rate",
                                  HEAD_LEARNING_RATES[self.head_objective])
        check_real(self.confidence_ratio, "confidence_ratio", 0.0, 1.0, "right")
        k = self.n_clusters
        batch_size = auto_int(self.batch_size, "batch_size", default_batch_size(k), k)
        # None: "auto" for SCAN heads, resolved from N (default_scan_minibatch_size)
        minibatch = auto_int(self.minibatch_size, "minibatch_size",
                              None if scan else default_minibatch_size(k), 2)
        if isinstance(self.entropy_weight, str) and self.entropy_weight == "auto":
            entropy_weight = SCAN_ENTROPY_WEIGHT if scan else (0.0 if k < 50 else 1.0)
        else:
            entropy_weight = check_real(self.entropy_weight, "entropy_weight", 0.0, None, "left")
        if not (self.small_stem is True or self.small_stem is False or self.small_stem == "auto"):
            raise ValueError(
                f"small_stem must be 'auto', True or False; got {self.small_stem!r}."
            )
        if not (isinstance(self.flip, (bool, np.bool_)) or self.flip == "auto"):
            raise ValueError(f"flip must be True, False or 'auto'; got {self.flip!r}.")
        if self.cache_dtype not in ("auto", "float32", "float16"):
            raise ValueError(
                f"cache_dtype must be 'auto', 'float32' or 'float16'; got {self.cache_dtype!r}."
            )
        backbone = self.backbone
        if not isinstance(backbone, (str, torch.nn.Module, FeatureExtractor)):
            raise TypeError(
                "backbone must be a timm model name, 'auto', 'precomputed', a "
                f"torch.nn.Module or a fitted backbone_; got {type(backbone).__name__}."
            )
        if isinstance(backbone, str) and backbone not in ("auto", "precomputed"):
            check_model_name(backbone)  # before any image is read
        if self.pretrain not in ("auto", "simclr", None):
            raise ValueError(f"pretrain must be 'auto', 'simclr' or None; got {self.pretrain!r}.")
        if backbone == "precomputed" and self.pretrain == "simclr":
            raise ValueError("pretrain='simclr' needs images; backbone='precomputed' has none.")
        pretrain_epochs = auto_int(self.pretrain_epochs, "pretrain_epochs", None, 1)
        if self.pretrain_time is not None:
            check_real(self.pretrain_time, "pretrain_time", 0.0, None, "neither")
        # None: "auto", resolved from the images (representation.default_simclr_settings)
        pretrain_batch_size = auto_int(self.pretrain_batch_size, "pretrain_batch_size", None, 2)
        pretrain_lr = auto_real(self.pretrain_learning_rate, "pretrain_learning_rate", None)
        temperature = auto_real(self.temperature, "temperature", None)
        check_int(self.projection_dim, "projection_dim", 1)
        pretrain = wants_pretraining(self.pretrain, backbone, self.weights)
        weights = self.weights
        if not (weights is None or isinstance(weights, (str, os.PathLike))):
            raise TypeError(
                "weights must be None, 'pretrained' or a path to a weight file; got "
                f"{type(weights).__name__}."
            )
        own_weights = isinstance(backbone, (torch.nn.Module, FeatureExtractor))
        if weights is not None and (own_weights or backbone == "precomputed"):
            raise ValueError(
                "weights must be None with backbone='precomputed', a torch.nn.Module or a "
                f"fitted backbone_ (they bring their own weights); got weights={weights!r}."
            )
        if not (self.checkpoint_dir is None or isinstance(self.checkpoint_dir, (str, os.PathLike))):
            raise TypeError("checkpoint_dir must be None or a folder path; got "
                            f"{type(self.checkpoint_dir).__name__}.")
        if self.cache_dir is not None and backbone != "precomputed":  # unused there
            check_writable_dir(self.cache_dir, "cache_dir")
        check_n_jobs(self.n_jobs)
        if self.semi not in (None, "head", "finetune"):
            raise ValueError(f"semi must be None, 'head' or 'finetune'; got {self.semi!r}.")
        if backbone == "precomputed" and self.semi == "finetune":
            raise ValueError("semi='finetune' needs images; backbone='precomputed' has none "
                             "(use semi='head').")
        n_neighbors = auto_int(self.n_neighbors, "n_neighbors", None, 1)
        check_real(self.reliability_threshold, "reliability_threshold", 0.0, 1.0, "both")
        check_real(self.semi_threshold, "semi_threshold", 0.0, 1.0, "both")
        check_int(self.semi_steps, "semi_steps", 1)
        check_int(self.semi_rounds, "semi_rounds", 1)
        if self.semi_time is not None:
            check_real(self.semi_time, "semi_time", 0.0, None, "neither")
        check_int(self.semi_batch_size, "semi_batch_size", 1)
        check_int(self.semi_mu, "semi_mu", 1)
        semi_lr = auto_real(self.semi_learning_rate, "semi_learning_rate",
                            SEMI_LEARNING_RATES.get(self.semi))
        check_real(self.ema_decay, "ema_decay", 0.0, 1.0, "left")
        return {
            # None: "auto", resolved by _resolve_views once the number of samples is known
            "n_weak_views": auto_int(self.n_weak_views, "n_weak_views", None, 1),
            "n_strong_views": auto_int(self.n_strong_views, "n_strong_views", None, 1),
            "semi": self.semi,
            "semi_learning_rate": semi_lr,
            "n_neighbors": n_neighbors,
            "batch_size": batch_size,
            "minibatch_size": minibatch,
            "max_epochs": max_epochs,
            "learning_rate": learning_rate,
            "entropy_weight": entropy_weight,
            "device": resolve_device(self.device),
            "pretrain": pretrain,
            "pretrain_epochs": pretrain_epochs,
            "pretrain_batch_size": pretrain_batch_size,
            "pretrain_learning_rate": pretrain_lr,
            "temperature": temperature,
            "compile": check_compile(self.compile),
            "cache_dtype": self.cache_dtype,
            "embed_batch_size": self.embed_batch_size,
        }


def _check_world_size(params, pretrain_batch_size, semi_batch_size):
    """Under torchrun every global batch is shared out, at least one sample a process:
    check that before any image is read (the training loops check again)."""
    world = distributed.world_size()
    for used, name, value in ((params["pretrain"] and pretrain_batch_size is not None,
                               "pretrain_batch_size", pretrain_batch_size),
                              (params["semi"] == "finetune", "semi_batch_size",
                               semi_batch_size)):
        if used and value < world:
            raise ValueError(f"{name} must be at least the number of processes ({world}) "
                             f"under torchrun; got {value}.")


def _resolve_neighbors(params, n_samples, n_clusters):
    """``n_neighbors``: "auto" is at most a sixth of the average cluster and at most 100
    (the paper's n_s); any value is capped below the average cluster size."""
    n_s = params["n_neighbors"]
    if n_s is None:
        n_s = min(100, n_samples // (6 * n_clusters))
    params["n_neighbors"] = max(1, min(n_s, n_samples // n_clusters - 1))


def _resolve_views(params, n_samples):
    """``n_weak_views``/``n_strong_views="auto"``: more views for small data sets."""
    small = n_samples <= SMALL_DATA_SIZE
    for key, (few, many) in (("n_weak_views", (2, 4)), ("n_strong_views", (4, 16))):
        if params[key] is None:
            params[key] = many if small else few


def _cache_dtype(choice, n_samples, n_views, dim):
    if choice == "auto":
        big = cache_nbytes(n_samples, n_views, dim, torch.float32) > AUTO_FLOAT16_BYTES
        return torch.float16 if big else torch.float32
    return getattr(torch, choice)


def _feature_cache(features, params, seed):
    """Cache of precomputed features with feature-space weak/strong views."""
    gen = torch.Generator().manual_seed(seed)
    n_weak, n_strong = params["n_weak_views"], params["n_strong_views"]
    weak = feature_views(features, n_weak, strong=False, generator=gen)
    strong = feature_views(features, n_strong, strong=True, generator=gen)
    return ViewCache(
        F.normalize(features, dim=1), F.normalize(weak, dim=2), F.normalize(strong, dim=2)
    )


def _image_cache(extractor, images, params, flip, seed, verbose, cache_dir=None):
    """Embed the original images and their augmented views once each.

    Returns the :class:`ViewCache` and whether embedding ran (False: the views
    were found in ``cache_dir``).
    """
    size = extractor.input_size
    n_weak, n_strong = params["n_weak_views"], params["n_strong_views"]
    transforms = (
        [None]
        + [weak_transform(size, flip=flip)] * n_weak
        + [strong_transform(size, flip=flip)] * n_strong
    )
    shape = (len(transforms), images.shape[0], extractor.feature_dim)
    dtype = _cache_dtype(params["cache_dtype"], *shape)
    device = params["device"]

    def embed(out=None):
        return embed_views(
            extractor, images, transforms, batch_size=params["embed_batch_size"],
            device=device, dtype=dtype, seed=seed, verbose=verbose, out=out,
            compile=params.get("compile", False),
        )

    if cache_dir is None:
        return _split_views(embed(), n_weak), True
    key = fingerprint(images, extractor, VIEW_CACHE_FORMAT, n_weak, n_strong, flip, seed,
                      str(dtype), str(autocast_dtype(device)), params["embed_batch_size"])
    path = Path(cache_dir) / f"views-{key}.npy"
    # Under torchrun rank 0 decides (processes that look for themselves could disagree
    # and wait for each other forever) and is the only one to write the file.
    main = distributed.is_main_process()
    check_same_images(images)  # a hit skips embed_views, which checks it otherwise
    hit = distributed.broadcast_object(_readable_cache(path, shape, dtype) if main else None)
    if hit:
        return _split_views(DiskArray.open(path), n_weak), False
    if not main:
        views = embed()  # the gathered embeddings of every image, kept in memory
    failure = None
    if main:
        try:
            with atomic_path(path) as tmp:
                embed(DiskArray.create(tmp, shape, dtype)).sync()
        except BaseException as error:  # the other processes must not wait for the file
            failure = error
    failed = distributed.broadcast_object(None if failure is None else repr(failure))
    if failure is not None:
        raise failure
    if failed is not None:
        raise RuntimeError(f"rank 0 could not write the view cache to {path}: {failed}")
    if main:
        views = DiskArray.open(path)
    return _split_views(views, n_weak), True


def _split_views(views, n_weak):
    return ViewCache(views[0], views[1 : 1 + n_weak], views[1 + n_weak :])


def _readable_cache(path, shape, dtype):
    """Whether ``path`` holds a view cache of ``shape`` and ``dtype``; a file that does
    not is recomputed and replaced (with a warning)."""
    if not path.is_file():
        return False
    try:
        stored = DiskArray.open(path)
        problem = None
        if (stored.shape, stored.dtype) != (tuple(shape), dtype):
            problem = f"holds {stored.dtype} values of shape {stored.shape}"
        elif path.stat().st_size < stored.nbytes_on_disk:
            problem = "is truncated"
    except (OSError, ValueError) as error:
        problem = f"cannot be read ({error})"
    if problem is None:
        return True
    warnings.warn(f"{path} {problem}, expected {dtype} values of shape {tuple(shape)}; "
                  "embedding again and replacing it.", UserWarning, stacklevel=5)
    return False
