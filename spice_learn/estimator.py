"""The scikit-learn estimator :class:`SpiceClustering`: parameters, the pipeline of
stages and fitted attributes.

Each stage is a function of its own module that owns its torch and distributed
work: :func:`~spice_learn.representation.learn_representation` (stage 1),
:func:`~spice_learn.view_cache.build_view_cache` and
:func:`~spice_learn.view_cache.neighbour_graph`,
:func:`~spice_learn.spice_self.fit_spice_self` and
:func:`~spice_learn.spice_semi.run_spice_semi`; :mod:`spice_learn.settings`
checks the parameters and resolves them into frozen per-stage settings.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin
from sklearn.base import TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .cluster_count import search_n_clusters
from .representation import plan_stage1, represent, resolve_flip
from .settings import PARAMETER_CONSTRAINTS, check_settings, inference_device, n_jobs_threads
from .settings import fitted_plan, resolve_settings, start_run
from .spice_self import cluster_centers, fit_spice_self, head_probabilities, head_selection_losses
from .spice_self import rescaled_ds_ce, warn_empty_clusters
from .spice_semi import run_spice_semi
from .view_cache import ViewSettings, as_inputs, build_view_cache, checked_features
from .view_cache import neighbour_graph, original_embeddings

__all__ = ["SpiceClustering"]

#: ``score`` builds prototypes with this fixed ``r`` (the paper's value), so that models
#: with different ``confidence_ratio`` are judged by the same criterion.
SCORE_CONFIDENCE_RATIO = 0.5


class SpiceClustering(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin,
                      BaseEstimator):
    """Image clustering with SPICE (Niu & Wang, "SPICE: Semantic Pseudo-labeling
    for Image Clustering").

    Stage 1 (a backbone without pretrained weights): contrastive pretraining on
    ``X``. The frozen backbone then embeds every image once per cached view.
    SPICE-Self: ``n_heads`` light heads are trained together and the one with the
    lowest label-free loss is kept. SPICE-Semi (``semi``): samples whose
    neighbours agree with their cluster become labelled data for a FixMatch
    refinement. Labels are never used.

    Parameters
    ----------
    n_clusters : int, "auto" or iterable of int, default=10
        Number of clusters ``k`` (at most the number of samples; 1 puts every
        sample in cluster 0). "auto" chooses it from 2-20, an iterable (e.g.
        ``range(5, 16)``) from its values, without labels: stage 1 and the views
        run once, quick heads cluster for each candidate and the highest
        silhouette wins (beyond SPICE; :mod:`spice_learn.cluster_count`).
    backbone : str, torch.nn.Module or FeatureExtractor, default="auto"
        A timm model name; ``"auto"`` (``"spice_convnet4"`` on the CPU, at 16 px for
        grayscale images and at their side clipped to 16-24 px for colour ones; on
        CUDA up to 28 px, else ``"resnet18"``: :mod:`spice_learn.representation`); a
        module mapping normalised ``(B, 3, H, W)`` images to ``(B, D)`` features; a
        fitted model's ``backbone_``; or ``"precomputed"``: ``X`` is a 2-D feature
        matrix, with feature-space views (:func:`spice_learn.cache_augment.feature_views`).
    weights : None, "pretrained" or path-like, default=None
        Backbone weights: random initialisation (None), timm's pretrained zoo
        (``"pretrained"``, needs a network or a filled Hugging Face cache; fails
        fast otherwise) or a local timm/torchvision state dict file.
    pretrain : {"auto", "simclr"} or None, default="auto"
        Stage 1: SimCLR training of the backbone on ``X`` (:mod:`spice_learn.pretrain`).
        "auto" pretrains exactly a timm name with ``weights=None``; None never does;
        "simclr" always does (fine-tuning given weights).
    pretrain_epochs : int or "auto", default="auto"
        Pretraining epochs. "auto": 100 on CUDA; on the CPU 60 for grayscale sets of
        up to 20,000 images and ``60 * sqrt(20,000 / n_samples)`` (at least 15) above,
        and ``100 * sqrt(10,000 / n_samples)`` clipped to 40-150 for colour images
        (:func:`spice_learn.representation.default_pretrain_epochs`).
    pretrain_time : float, None or "auto", default="auto"
        Wall-clock budget for pretraining in seconds; training stops when it is
        spent and the learning-rate schedule follows the clock (results then
        depend on the machine's speed). None: no budget. "auto": with
        ``pretrain_epochs="auto"`` on a CPU, a few steps are timed first and the
        epochs are cut to what fits a budget that grows with ``n_samples`` (1 minute
        for 1,800 grayscale images, 7.2 for 9,300, at most 25; 3.8 minutes for 2,000
        colour images, 15 for 10,000;
        :func:`spice_learn.representation.cpu_pretrain_budget`), then run in full;
        ``plan_`` shows the budget, the measured speed and the epochs (pass them as
        ``pretrain_epochs`` to repeat a fit exactly). The rule's epochs stand when at
        least 80 % of them fit; the cut keeps at least 5. Elsewhere (CUDA, explicit
        epochs, a ``checkpoint_dir``, whose reruns must plan the same epochs to
        resume) "auto" is None.
    pretrain_batch_size : int or "auto", default="auto"
        Images per pretraining step (two views each).
    pretrain_learning_rate : float or "auto", default="auto"
        Peak AdamW learning rate of pretraining.
    temperature : float or "auto", default="auto"
        NT-Xent temperature. "auto" for these three: batch 64 (256 on a GPU), 1e-3
        and 0.5 for grayscale images, 64, 2e-3 and 0.2 for colour ones (128, 4e-3
        and 0.2 on a GPU) (:func:`spice_learn.representation.default_simclr_settings`).
    projection_dim : int, default=128
        Output size of the SimCLR projection head.
    small_stem : {"auto", True, False}, default="auto"
        Remove the stem's downsampling of ResNet-like models (the CIFAR stem of
        SCAN/SPICE) instead of resizing to 224 px; "auto": for images up to 64 px.
    n_heads : int, default=10
        Number of heads trained together; the best one is selected without labels.
    head_objective : {"scan", "spice"}, default="scan"
        What the heads learn from. "spice": SPICE-Self's prototype pseudo-labels
        and double-softmax cross-entropy (paper Algorithm 1). "scan" (beyond
        SPICE): SCAN's neighbour consistency with 5-20 neighbours (20 from 800
        images a cluster on, :func:`~spice_learn.scan_heads.scan_neighbors`), plus an
        entropy term (:mod:`spice_learn.scan_heads`). The head with the lowest loss is
        kept; SPICE-Semi runs on either.
    hidden_dim : int, None or "auto", default="auto"
        Hidden width of each head (SPICE-Self's and SPICE-Semi's "head"); None uses
        the feature dimension ``D`` (paper); "auto": ``D``, at most 128 (half the
        head time for 256-dimensional embeddings, with accuracy within the seeds'
        spread on the development sets: :data:`~spice_learn.heads.HIDDEN_DIM_CAP`).
    batch_size : int or "auto", default="auto"
        ``M``, samples per pseudo-labelling step ("spice" heads); "auto": the
        paper's 100 per cluster, 1000-5000.
    minibatch_size : int or "auto", default="auto"
        ``m2``, samples per gradient step; "auto": 128 (256 from 100 clusters) for
        "spice" heads, ``n_samples // 8`` clipped to 16-256 for "scan" heads.
    max_epochs : int or "auto", default="auto"
        Head training epochs; "auto": 100 ("spice"), ``150,000 / n_samples``
        clipped to 5-100 ("scan").
    learning_rate : float or "auto", default="auto"
        Adam learning rate of the heads; "auto": 5e-3 ("spice", as SPICE), 1e-3 ("scan").
    confidence_ratio : float, default=0.5
        ``r``: share of ``M / k`` most confident samples that form each prototype.
    entropy_weight : float or "auto", default="auto"
        Weight of an entropy term on the mean prediction that keeps clusters from
        emptying. "auto" with "scan" heads trains heads at SCAN's 5 and at 2 and 1,
        and keeps the weight whose clusters best follow the graph of up to 10
        nearest neighbours, among those that fill the most clusters (label-free;
        lower weights allow clusters of uneven sizes, see
        :func:`spice_learn.neighbors.neighbour_agreement`) at the end of their
        training (see :func:`spice_learn.spice_self.fit_spice_self`), so the heads
        take 3 times the time of one weight. With "spice" heads 0 below 50
        clusters and 1 from 50 on.
    n_weak_views, n_strong_views : int or "auto", default="auto"
        Augmented views cached per image, each one backbone pass and ``D`` floats
        per image; "auto": 4 and 16 up to 5,000 samples, else 2 and 4, and one
        strong view when nothing learns from them (SCAN heads with SPICE-Semi
        "finetune" or None; :func:`spice_learn.view_cache.default_n_views`).
    flip : bool or "auto", default="auto"
        Whether augmentations flip images horizontally; "auto": for network inputs
        larger than 20 px (not digits or characters, where a mirror is another symbol).
    invariances : "auto", None or list of {"hue", "polarity", "rotation"}, default="auto"
        What else stage 1's contrastive views teach the network to ignore: colour
        ("hue": any hue and gray; without it colour images get SimCLR's gentle jitter),
        light-on-dark against dark-on-light ("polarity") and orientation ("rotation":
        any angle). "auto" tests the images without labels: a transformation is kept
        when a linear classifier cannot tell transformed thumbnails from untransformed
        ones, i.e. when the images come in every hue (or both polarities)
        (:func:`spice_learn.invariances.detect_invariances`; fewer than 40 colour
        images are not tested and keep "hue" and "polarity"); None keeps none. A list
        or tuple sets them ("hue" does nothing for grayscale images). Rotation is never
        chosen by "auto": on random-rotation shapes it lowered ACC from 0.53 to 0.37
        (one seed). SPICE-Semi's "finetune" views follow the same choice. The result
        and the test's accuracies are in ``plan_``.
    cache_dtype : {"auto", "float32", "float16"}, default="auto"
        Storage of cached embeddings; "auto": float16 once float32 would exceed 1 GiB.
    embed_batch_size : int, default=256
        Images per backbone forward pass (halved on a CUDA out-of-memory error).
    checkpoint_dir : path-like or None, default=None
        Folder where pretraining saves its state after every epoch, keyed by
        images, starting weights, settings and seed; a later ``fit`` with the
        same key resumes from it (see :func:`spice_learn.pretrain.pretrain_simclr`).
    cache_dir : path-like or None, default=None
        Folder for the embeddings of all cached views (None: in memory), in a
        file keyed by images, weights, view settings, seed and storage type; a
        later ``fit`` with the same key reads it instead of embedding again, and
        the heads read their minibatches from it. Only fits with an int
        ``random_state`` reuse a file. See :mod:`spice_learn.view_cache`.
    n_jobs : int or None, default=None
        Torch CPU threads in every method (-1: all cores; None: torch's setting);
        in ``fit`` on Linux also the worker processes that augment the cached views, one
        per thread when there are at least two (:func:`~spice_learn.embedding.augment_workers`).
    semi : {"auto", "head", "finetune"} or None, default="auto"
        SPICE-Semi (paper section 3.3): after SPICE-Self, samples whose
        neighbourhood agrees with their cluster become labelled data for a
        FixMatch-style refinement. "finetune" trains backbone and head end to
        end on augmented images (the paper's setting); "head" trains a fresh
        classifier on the cached view embeddings (seconds on a CPU); None keeps
        the SPICE-Self clustering. "auto": "finetune" when this fit pretrains
        its backbone, on CUDA or, for grayscale images, on a CPU whose time budget
        (``pretrain_time="auto"``) leaves it at least 200 steps (on 2 cores from
        about 5,000 images); "head" otherwise, so colour images on a CPU give the
        whole budget to stage 1 (:func:`spice_learn.spice_semi.default_semi_mode`).
        An explicit "finetune" on a CPU takes a fifth of the budget for any images.
    n_neighbors : int or "auto", default="auto"
        ``n_s``: neighbours (cosine, original embeddings) that vote on each
        sample's reliability, clipped to ``n_samples // n_clusters - 1``; "auto":
        ``min(100, n_samples // (6 * n_clusters))``
        (:func:`spice_learn.spice_semi.reliability_neighbors`).
    reliability_threshold : float, default=0.95
        ``tau_c``: a sample is reliable when at least this share of its
        neighbours has its SPICE-Self cluster.
    semi_threshold : float, default=0.95
        ``tau``: unlabelled samples count only when their weak-view confidence
        reaches this.
    semi_steps : int or "auto", default="auto"
        Gradient steps per SPICE-Semi round. "auto": 1,000; for "finetune" under
        the CPU time budget (``pretrain_time="auto"``), the steps that fit the
        fifth of the budget stage 1 leaves to it (at least 200; ``plan_``).
    semi_rounds : int or "auto", default="auto"
        SPICE-Semi rounds ("auto": 1 for "finetune", as the paper; 2 for
        "head"); each further round takes the
        reliable samples from the previous round's clusters and trains again.
        Rounds stop early when no sample is reliable or a round empties a
        cluster; with "head", a round is also undone (and the rounds end) when its
        clustering fills as many clusters as the one it started from but agrees
        less with the 10-nearest-neighbour graph
        (:func:`spice_learn.spice_semi.run_spice_semi`).
    semi_time : float or None, default=None
        Wall-clock budget of each SPICE-Semi round in seconds (None: no budget).
    semi_batch_size : int, default=64
        ``B``, reliable samples per step.
    semi_mu : int or "auto", default="auto"
        ``mu``, unlabelled samples per reliable sample in a step. "auto": 7
        (FixMatch), 3 for "finetune" off CUDA (a step then costs half as much).
    semi_learning_rate : float or "auto", default="auto"
        "auto": 1e-3 (Adam) for "head", 0.03 (SGD, as FixMatch) for "finetune".
    ema_decay : float, default=0.999
        "finetune" only: decay of the kept moving average of the weights (0: none).
    device : str or torch.device, default="auto"
        "auto" uses CUDA when available, else the CPU.
    compile : bool, default=False
        Run the backbone through :func:`torch.compile` in every stage (meant for
        long GPU runs; ignored under torchrun, with a warning).
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, augmentation and sampling.
    verbose : int, default=0
        0: silent; 1 or more: progress bars and one line per stage on standard error.

    Notes
    -----
    With ``backbone="precomputed"`` the image-only parameters have no effect.
    ``labels_`` and ``predict`` use the original (unaugmented) images, as in line
    27 of Algorithm 1; pseudo-labelling and head selection use weak views.

    Under torchrun every process must call each method together with the same
    ``X``: ValueError is raised in every process when the images differ.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample.
    backbone_ : FeatureExtractor or None
        The (pretrained, fine-tuned) backbone and its preprocessing (None when
        precomputed); pass it as ``backbone=`` to reuse it.
    pretrain_history_ : ndarray of shape (n_pretrain_epochs,)
        Mean NT-Xent loss per pretraining epoch (empty without pretraining).
    heads_ : MultiHeadClassifier
        All trained heads (on the CPU).
    classifier_ : MultiHeadClassifier
        The classifier ``predict`` uses: SPICE-Semi's, else the selected head.
    head_losses_ : ndarray of shape (n_heads,)
        Selection loss (SCAN or DS-CE) of each head over the whole training set
        (lower is better).
    entropy_weight_ : float
        The entropy weight of ``heads_`` (the chosen one with "auto").
    entropy_weight_scores_ : dict or None
        Candidate entropy weight to the neighbour agreement of its selected head's
        clustering, the agreements the weight was chosen on (None when there was
        one weight).
    best_head_ : int
        Index of the selected head, ``argmin(head_losses_)``.
    loss_history_ : ndarray of shape (max_epochs, n_heads)
        Mean training loss per epoch and head.
    self_labels_ : ndarray of shape (n_samples,)
        SPICE-Self cluster of each training sample (before SPICE-Semi; equal to
        ``labels_`` when ``semi=None``).
    reliability_ : ndarray of shape (n_samples,) or None
        Share of each sample's ``n_neighbors`` neighbours in its cluster at the
        start of the last SPICE-Semi round (None when ``semi=None``).
    reliable_mask_ : ndarray of shape (n_samples,), bool, or None
        ``reliability_ >= reliability_threshold``: the training samples the
        model is confident about (useful to clean a data set).
    n_neighbors_ : int or None
        The number of neighbours SPICE-Semi's reliability used (``n_neighbors``
        resolved for this data set; None when ``semi=None``).
    semi_history_ : ndarray of shape (n_steps, 3) or None
        Per SPICE-Semi step of the kept rounds: supervised loss, unlabelled loss
        and share of unlabelled samples above ``semi_threshold`` (None when no
        round was kept).
    semi_rounds_ : int or None
        SPICE-Semi rounds kept (0: the SPICE-Self clustering is the result; None
        with ``semi=None``).
    n_clusters_ : int
        The number of clusters used (the chosen one with "auto" or candidates).
    n_clusters_scores_ : dict or None
        Candidate ``k`` to its silhouette (None for an int ``n_clusters``).
    cluster_centers_ : ndarray of shape (k, D), k = ``n_clusters_``
        Prototypes (Eq. 2) in the L2-normalised embedding space.
    n_features_in_ : int
        Number of features (``backbone="precomputed"`` only).
    plan_ : dict
        What the "auto" settings resolved to: ``backbone``, ``input_size``,
        ``colour``, ``pretrain_epochs``, ``pretrain_batch_size``,
        ``pretrain_learning_rate``, ``temperature``, ``invariances`` (the optional
        invariances of the contrastive views), ``invariance_scores`` (the accuracy of
        the test that chose them; empty when given or not tested), ``n_weak_views``,
        ``n_strong_views``, ``head_objective``, ``head_epochs``,
        ``pretrain_budget`` (seconds the epochs were fitted to with
        ``pretrain_time="auto"``, or None), ``pretrain_views_per_second`` (the speed
        measured for it, or None), ``finetune_steps`` (the SPICE-Semi "finetune"
        steps the budget left time for, or None), ``semi``, ``semi_steps``,
        ``semi_rounds`` and ``semi_mu`` (SPICE-Semi as run; ``semi`` None without
        it) and ``estimated_seconds`` (stage 1, the views and the ``finetune_steps`` on
        this CPU, from the measured speed, or else on 2 fast cores; None without a
        cost model).

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
        pretrain_epochs="auto", pretrain_time="auto", pretrain_batch_size="auto",
        pretrain_learning_rate="auto", temperature="auto", projection_dim=128, small_stem="auto",
        n_heads=10, head_objective="scan",
        hidden_dim="auto", batch_size="auto", minibatch_size="auto", max_epochs="auto",
        learning_rate="auto", confidence_ratio=0.5, entropy_weight="auto", n_weak_views="auto",
        n_strong_views="auto", flip="auto", invariances="auto", cache_dtype="auto",
        embed_batch_size=256, checkpoint_dir=None, cache_dir=None, n_jobs=None,
        semi="auto", n_neighbors="auto", reliability_threshold=0.95, semi_threshold=0.95,
        semi_steps="auto", semi_rounds="auto", semi_time=None, semi_batch_size=64,
        semi_mu="auto", semi_learning_rate="auto", ema_decay=0.999, device="auto", compile=False,
        random_state=None, verbose=0,
    ):
        # Each parameter is stored unchanged under its own name (scikit-learn's rule).
        vars(self).update((name, value) for name, value in locals().items() if name != "self")

    _parameter_constraints = PARAMETER_CONSTRAINTS

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Cluster ``X``.

        Parameters
        ----------
        X : images or features
            Any input of :func:`spice_learn.image_input.as_images`, or a 2-D
            feature matrix with ``backbone="precomputed"``.
        y : ignored
            Present for API consistency; labels are never used.

        Returns
        -------
        self : SpiceClustering
            The fitted estimator. Nothing is changed when ``fit`` raises.
        """
        with n_jobs_threads(self.n_jobs):
            return self._fit(X)

    def _fit(self, X):
        params = self.get_params(deep=False)
        device = check_settings(params)  # before any image is read
        inputs = as_inputs(X, params["backbone"] == "precomputed")
        settings = resolve_settings(params, device, inputs.shape[0])
        run = start_run(settings, self.random_state, self.verbose)
        plan = None if settings.precomputed else plan_stage1(
            inputs, settings.stage1, seed=run.seeds.build, device=run.device)
        if plan is not None:  # the views' and SPICE-Semi's "auto" values follow the plan
            settings = resolve_settings(params, device, settings.n_samples, plan=plan)
        stage1 = None if plan is None else represent(  # stage 1: the representation
            inputs, settings.stage1, plan, build_seed=run.seeds.build,
            pretrain_seed=run.seeds.pretrain, device=run.device,
            n_views=settings.views.n_views, verbose=run.verbose, log=run.log)
        extractor = None if stage1 is None else stage1.extractor
        flip = None if stage1 is None else stage1.flip
        built = build_view_cache(extractor, inputs, settings.views, flip=flip,
                                 seed=run.seeds.views, device=run.device, verbose=run.verbose,
                                 log=run.log)
        cache, scores = built.cache, None
        neighbors = neighbour_graph(cache, settings.neighbours_needed(), run.device)
        k = settings.n_clusters
        if not isinstance(k, int):  # "auto" or candidates: quick heads score each, then k
            search = search_n_clusters(cache, neighbors, k, settings.heads, seed=run.seeds.heads,
                                       device=run.device, log=run.log)
            k, scores = search.best, search.scores_by_k()
            settings = resolve_settings(params, device, settings.n_samples, n_clusters=k,
                                        plan=None if stage1 is None else stage1.plan)
        spice_self = fit_spice_self(cache, neighbors, k, settings.heads,
                                    seed=run.seeds.heads, device=run.device,
                                    verbose=run.verbose, log=run.log)
        classifier, features, semi = spice_self.classifier, cache.original[:], None
        if settings.semi is not None:
            semi = run_spice_semi(cache, features, classifier, spice_self.self_labels, neighbors,
                                  settings.semi, seed=run.seeds.semi, device=run.device,
                                  extractor=extractor, images=inputs, flip=flip,
                                  recipe=None if stage1 is None else stage1.recipe(),
                                  verbose=run.verbose, log=run.log)
            classifier, features = semi.classifier, semi.features
        labels, centers = cluster_centers(classifier, features, self.confidence_ratio)
        # Everything succeeded: only now touch the estimator's state.
        self._set_fitted(stage1, spice_self, classifier, labels, centers, semi, settings, scores)
        return self

    def _set_fitted(self, stage1, spice_self, classifier, labels, centers, semi, settings, scores):
        extractor = None if stage1 is None else stage1.extractor
        if extractor is not None:
            extractor.module.cpu()
        self.backbone_ = extractor
        self.pretrain_history_ = np.asarray([] if stage1 is None else stage1.history, float)
        self.heads_ = spice_self.heads.cpu()
        self.classifier_ = classifier.cpu()
        self.head_losses_, self.best_head_ = spice_self.losses, spice_self.best
        self.loss_history_, self.self_labels_ = spice_self.history, spice_self.self_labels
        self.entropy_weight_ = float(spice_self.settings.entropy_weight)
        self.entropy_weight_scores_ = spice_self.weight_scores
        self.cluster_centers_, self.labels_ = centers, labels
        self.reliability_, self.reliable_mask_, self.semi_history_ = (None,) * 3 if (
            semi is None) else (semi.reliability, semi.reliable, semi.history)
        self.n_neighbors_ = None if semi is None else settings.semi.n_neighbors
        self.semi_rounds_ = None if semi is None else semi.rounds
        self.plan_ = fitted_plan(settings, stage1, spice_self.history.shape[0])
        self.n_clusters_, self.n_clusters_scores_ = settings.n_clusters, scores
        warn_empty_clusters(labels, self.n_clusters_, stacklevel=4)
        if extractor is None:
            self.n_features_in_ = int(centers.shape[1])
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_

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
        with n_jobs_threads(self.n_jobs):
            return self._embed(X).numpy()

    @property
    def _n_features_out(self):
        """Number of output features of ``transform`` (for ``get_feature_names_out``)."""
        return self.cluster_centers_.shape[1]

    def score(self, X, y=None):
        """Label-free quality of the clustering of ``X``: higher is better.

        The classifier's DS-CE on ``X`` (SPICE-Self's head-selection criterion,
        ``M = N``, ``r = 0.5``) rescaled by :func:`~spice_learn.spice_self.rescaled_ds_ce`:
        1 for one-hot predictions of every pseudo-label, 0 for uniform ones.
        ``y`` is ignored: ``GridSearchCV`` can tune without labels.

        Parameters
        ----------
        X : images or features
        y : ignored

        Returns
        -------
        score : float
        """
        check_is_fitted(self, "classifier_")
        with n_jobs_threads(self.n_jobs):
            return self._score(X)

    def _score(self, X):
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        views = ViewSettings(1, 1, "float32", self.embed_batch_size,
                             compile=getattr(self, "compile", False))
        if self.backbone_ is None:
            inputs, flip = checked_features(X, self.n_features_in_), None
        else:
            inputs, flip = as_inputs(X, False), resolve_flip(self.flip, self.backbone_)
        cache = build_view_cache(self.backbone_, inputs, views, flip=flip, seed=seed,
                                 device=inference_device(self.device), shared=True).cache
        loss = float(head_selection_losses(self.classifier_, cache,
                                           confidence_ratio=SCORE_CONFIDENCE_RATIO)[0])
        return rescaled_ds_ce(loss, self.n_clusters_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # embeddings are float32
        return tags

    # -------------------------------------------------------------- predict
    def predict_proba(self, X):
        """Cluster probabilities of the selected head.

        Leaves the fitted model as it is: several threads may predict with one model.

        Parameters
        ----------
        X : images or features
            Same kind of input as in ``fit``; images may have another size.
            Under torchrun, the same images in every process (see Notes).

        Returns
        -------
        proba : ndarray of shape (n_samples, k), k = ``n_clusters_``
        """
        check_is_fitted(self, "classifier_")
        with n_jobs_threads(self.n_jobs):
            return head_probabilities(self.classifier_, self._embed(X))[0].cpu().numpy()

    def predict(self, X):
        """Cluster of each sample of ``X`` (images or features), the argmax of
        :meth:`predict_proba`, as an ndarray of shape (n_samples,)."""
        return self.predict_proba(X).argmax(axis=1)

    def _embed(self, X):
        return original_embeddings(
            self.backbone_, X, n_features_in=getattr(self, "n_features_in_", None),
            batch_size=self.embed_batch_size, device=inference_device(self.device),
            compile=getattr(self, "compile", False), verbose=self.verbose)
