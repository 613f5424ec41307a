"""Parameters of the estimators: their constraints, the checks that name them, and the
frozen per-stage settings a ``fit`` resolves them to once.

:data:`PARAMETER_CONSTRAINTS` declares what each parameter of
:class:`~spice_learn.SpiceClustering` accepts, in scikit-learn's vocabulary
(``Interval``, ``StrOptions``, ...); :class:`~spice_learn.ImageEmbedder` shares the
entries of the parameters it has. :func:`check_parameters` raises an error that
names the parameter and the accepted values. The "auto" rules live beside the stage
they configure (``default_*`` functions in :mod:`~spice_learn.view_cache`,
:mod:`~spice_learn.spice_self`, :mod:`~spice_learn.scan_heads` and
:mod:`~spice_learn.spice_semi`); :func:`resolve_settings` applies them once the
number of samples is known.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Callable, NamedTuple

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, make_constraint

from . import distributed
from .backbones import FeatureExtractor, check_model_name
from .cluster_count import check_n_clusters
from .neighbors import AGREEMENT_NEIGHBORS
from .representation import MIN_FINETUNE_STEPS, Stage1Settings, wants_pretraining
from .runtime import on_cuda, torch_threads, usable_device
from .scan_heads import scan_neighbors
from .spice_self import HeadSettings
from .ssl_augment import INVARIANCES, check_invariances
from .spice_semi import (
    DEFAULT_SEMI_STEPS,
    SemiSettings,
    default_semi_learning_rate,
    default_semi_mode,
    default_semi_mu,
    default_semi_rounds,
    reliability_neighbors,
)
from .validation import check_int, check_n_jobs, check_real, check_writable_dir, resolve_device
from .view_cache import ViewSettings, default_n_views

__all__ = ["PARAMETER_CONSTRAINTS", "STAGE1_PARAMETERS", "check_parameters", "Settings",
           "stage1_settings", "check_stage1", "check_settings", "resolve_settings", "SeedStreams",
           "seed_streams", "Run", "start_run", "fitted_plan", "inference_device", "n_jobs_threads"]

_POSITIVE_INT = Interval(Integral, 1, None, closed="left")
_POSITIVE_REAL = Interval(Real, 0.0, None, closed="neither")
_AUTO = StrOptions({"auto"})
_PATH = [None, str, os.PathLike]

#: What every parameter of :class:`~spice_learn.SpiceClustering` accepts.
PARAMETER_CONSTRAINTS = {
    "n_clusters": [_POSITIVE_INT, _AUTO, "array-like"],  # candidates: checked in resolve
    "backbone": [str, torch.nn.Module, FeatureExtractor],
    "weights": _PATH,
    "pretrain": [StrOptions({"auto", "simclr"}), None],
    "pretrain_epochs": [_POSITIVE_INT, _AUTO],
    "pretrain_time": [None, _POSITIVE_REAL, _AUTO],
    "pretrain_batch_size": [Interval(Integral, 2, None, closed="left"), _AUTO],
    "pretrain_learning_rate": [_POSITIVE_REAL, _AUTO],
    "temperature": [_POSITIVE_REAL, _AUTO],
    "projection_dim": [_POSITIVE_INT],
    "small_stem": [_AUTO, "boolean"],
    "n_heads": [_POSITIVE_INT],
    "head_objective": [StrOptions({"scan", "spice"})],
    "hidden_dim": [None, _POSITIVE_INT, _AUTO],
    "batch_size": [_POSITIVE_INT, _AUTO],  # at least n_clusters: checked in check_settings
    "minibatch_size": [Interval(Integral, 2, None, closed="left"), _AUTO],
    "max_epochs": [_POSITIVE_INT, _AUTO],
    "learning_rate": [_POSITIVE_REAL, _AUTO],
    "confidence_ratio": [Interval(Real, 0.0, 1.0, closed="right")],
    "entropy_weight": [Interval(Real, 0.0, None, closed="left"), _AUTO],
    "n_weak_views": [_POSITIVE_INT, _AUTO],
    "n_strong_views": [_POSITIVE_INT, _AUTO],
    "flip": ["boolean", _AUTO],
    "invariances": [_AUTO, None, list, tuple],  # names: checked in check_stage1
    "cache_dtype": [StrOptions({"auto", "float32", "float16"})],
    "embed_batch_size": [_POSITIVE_INT],
    "checkpoint_dir": _PATH,
    "cache_dir": _PATH,
    "n_jobs": [None, Interval(Integral, -1, None, closed="left")],  # 0: check_n_jobs
    "semi": [None, StrOptions({"auto", "head", "finetune"})],
    "n_neighbors": [_POSITIVE_INT, _AUTO],
    "reliability_threshold": [Interval(Real, 0.0, 1.0, closed="both")],
    "semi_threshold": [Interval(Real, 0.0, 1.0, closed="both")],
    "semi_steps": [_POSITIVE_INT, _AUTO],
    "semi_rounds": [_POSITIVE_INT, _AUTO],
    "semi_time": [None, _POSITIVE_REAL],
    "semi_batch_size": [_POSITIVE_INT],
    "semi_mu": [_POSITIVE_INT, _AUTO],
    "semi_learning_rate": [_POSITIVE_REAL, _AUTO],
    "ema_decay": [Interval(Real, 0.0, 1.0, closed="left")],
    "device": "no_validation",  # resolve_device names the accepted devices
    "compile": ["boolean"],
    "random_state": ["random_state"],
    "verbose": [Interval(Integral, 0, None, closed="left")],
}

#: The stage-1 parameters :class:`~spice_learn.ImageEmbedder` shares with the estimator.
STAGE1_PARAMETERS = ("backbone", "weights", "pretrain", "pretrain_epochs", "pretrain_time",
                     "small_stem", "flip", "invariances", "device", "compile", "random_state",
                     "verbose")

#: How the errors spell what a parameter accepts, where the constraints alone would not
#: say it clearly: (error type, accepted values, whether the message shows the value).
_SPELLED = {
    "backbone": (TypeError, "a timm model name, 'auto', 'precomputed', a torch.nn.Module or "
                 "a fitted backbone_", False),
    "weights": (TypeError, "None, 'pretrained' or a path to a weight file", False),
    "checkpoint_dir": (TypeError, "None or a folder path", False),
    "cache_dir": (TypeError, "None or a folder path", False),
    "compile": (TypeError, "True or False", True),
    "random_state": (ValueError, "None, an int or a numpy RandomState", True),
    "pretrain": (ValueError, "'auto', 'simclr' or None", True),
    "small_stem": (ValueError, "'auto', True or False", True),
    "head_objective": (ValueError, "'scan' or 'spice'", True),
    "flip": (ValueError, "True, False or 'auto'", True),
    "invariances": (ValueError, f"'auto', None or a list of names among {INVARIANCES}", True),
    "cache_dtype": (ValueError, "'auto', 'float32' or 'float16'", True),
    "hidden_dim": (ValueError, "None, a positive int or 'auto'", True),
    "semi": (ValueError, "None, 'auto', 'head' or 'finetune'", True),
}


def _satisfied(value, constraints):
    """Whether ``value`` meets one of ``constraints`` (a bool is never a number here)."""
    is_bool = isinstance(value, (bool, np.bool_))
    for constraint in constraints:
        if is_bool and isinstance(constraint, Interval):
            continue
        if make_constraint(constraint).is_satisfied_by(value):
            return True
    return False


def check_parameters(params, constraints):
    """Check each of ``params`` (a name-to-value dict) against ``constraints``.

    Parameters
    ----------
    params : dict
    constraints : dict
        Name to a list of scikit-learn constraints, as
        :data:`PARAMETER_CONSTRAINTS`; ``params`` without an entry are not checked.

    Raises
    ------
    TypeError or ValueError
        For the first value no constraint accepts, with a message naming the
        parameter, what it accepts and what it got.
    """
    for name, accepted in constraints.items():
        if accepted == "no_validation" or name not in params:
            continue
        if not _satisfied(params[name], accepted):
            _reject(name, params[name], accepted)


def _reject(name, value, accepted):
    if name in _SPELLED:
        error, text, show_value = _SPELLED[name]
        got = repr(value) if show_value else type(value).__name__
        raise error(f"{name} must be {text}; got {got}.")
    interval = next(c for c in accepted if isinstance(c, Interval))
    if isinstance(value, str) and _AUTO in accepted and interval.type is Integral:
        raise ValueError(f"{name} must be an int or 'auto'; got {value!r}.")
    if interval.type is Integral:
        check_int(value, name, interval.left)
    check_real(value, name, interval.left, interval.right, interval.closed)
    raise AssertionError(f"{name}={value!r} was rejected without a message")  # pragma: no cover


# ------------------------------------------------------------------ resolved settings
@dataclass(frozen=True)
class Settings:
    """Every stage's settings, resolved once per ``fit``."""

    stage1: Stage1Settings
    views: ViewSettings
    heads: HeadSettings
    semi: SemiSettings | None
    device: torch.device
    precomputed: bool
    n_jobs: int | None
    n_samples: int
    n_clusters: int | tuple = 10

    def neighbours_needed(self, n_clusters=None):
        """Neighbours per sample one search must find for SPICE-Self ("scan" heads and
        their entropy-weight choice) and SPICE-Semi (reliability, and the agreement
        check of "head") together, each taking the nearest ones (0: none); by default
        for the smallest of the candidate numbers of clusters, which needs the most.
        The neighbour agreement gets its :data:`~spice_learn.neighbors.AGREEMENT_NEIGHBORS`
        (at most ``n_samples - 1``)."""
        if n_clusters is None:
            n_clusters = self.n_clusters if isinstance(self.n_clusters, int) else self.n_clusters[0]
        needed = [0]
        if self.heads.objective == "scan":
            needed += [scan_neighbors(self.n_samples, n_clusters), AGREEMENT_NEIGHBORS]
        if self.semi is not None:
            needed.append(self.semi.n_neighbors)
            if self.semi.mode == "head" and self.semi.check_agreement:
                needed.append(AGREEMENT_NEIGHBORS)
        return min(max(needed), max(self.n_samples - 1, 0))


def _auto(value):
    return None if isinstance(value, str) and value == "auto" else value


def stage1_settings(params):
    """:class:`Stage1Settings` of checked ``params`` (missing ones: the estimator's defaults)."""
    get = params.get
    return Stage1Settings(
        backbone=params["backbone"], weights=params["weights"],
        pretrain=wants_pretraining(params["pretrain"], params["backbone"], params["weights"]),
        pretrain_epochs=_auto(params["pretrain_epochs"]), max_time=params["pretrain_time"],
        batch_size=_auto(get("pretrain_batch_size", "auto")),
        learning_rate=_auto(get("pretrain_learning_rate", "auto")),
        temperature=_auto(get("temperature", "auto")), projection_dim=get("projection_dim", 128),
        small_stem=params["small_stem"], flip=params["flip"],
        invariances=_invariances(get("invariances", "auto")),
        checkpoint_dir=get("checkpoint_dir"), compile=bool(params["compile"]),
        finetune_step_views=_finetune_step_views(params),
        finetune_colour=params.get("semi") == "finetune")


def _finetune_step_views(params):
    """Images one SPICE-Semi "finetune" step trains on (``B (1 + 2 mu)``, with the CPU's
    ``mu``, :func:`~spice_learn.spice_semi.default_semi_mu`: only a CPU budget uses
    it), when ``semi`` may finetune; else None."""
    if params.get("semi") not in ("auto", "finetune"):
        return None
    mu = _auto(params.get("semi_mu", "auto")) or default_semi_mu("finetune", "cpu")
    return params.get("semi_batch_size", 64) * (1 + 2 * mu)


def _invariances(value):
    """``invariances`` -> None ("auto") or a tuple of names."""
    if isinstance(value, str):
        return None
    return tuple(value or ())


def check_stage1(params):
    """Check the stage-1 entries of ``params`` (the :data:`STAGE1_PARAMETERS` present)
    and their combinations; returns their :class:`~spice_learn.representation.Stage1Settings`
    and the device to run on. Shared by both estimators."""
    check_parameters(params, {name: PARAMETER_CONSTRAINTS[name] for name in STAGE1_PARAMETERS})
    names = params.get("invariances", "auto")
    if not isinstance(names, str) and names is not None:
        check_invariances(names)
    backbone, precomputed = params["backbone"], params["backbone"] == "precomputed"
    if isinstance(backbone, str) and backbone not in ("auto", "precomputed"):
        check_model_name(backbone)  # before any image is read
    if precomputed and params["pretrain"] == "simclr":
        raise ValueError("pretrain='simclr' needs images; backbone='precomputed' has none.")
    if params["weights"] is not None and (not isinstance(backbone, str) or precomputed):
        raise ValueError(
            "weights must be None with backbone='precomputed', a torch.nn.Module or a "
            f"fitted backbone_ (they bring their own weights); got weights={params['weights']!r}.")
    return stage1_settings(params), resolve_device(params["device"])


def check_settings(params):
    """Check ``params`` (``get_params()`` of the estimator) before any image is read:
    each parameter alone, then the combinations; returns the device to run on."""
    check_parameters(params, PARAMETER_CONSTRAINTS)
    if not isinstance(params["batch_size"], str) and isinstance(params["n_clusters"], Integral):
        check_int(params["batch_size"], "batch_size", params["n_clusters"])
    stage1, device = check_stage1(params)
    precomputed = params["backbone"] == "precomputed"
    if params["cache_dir"] is not None and not precomputed:  # unused there
        check_writable_dir(params["cache_dir"], "cache_dir")
    check_n_jobs(params["n_jobs"])
    if precomputed and params["semi"] == "finetune":
        raise ValueError("semi='finetune' needs images; backbone='precomputed' has none "
                         "(use semi='head').")
    _check_world_size(params, stage1)
    return device


def _check_world_size(params, stage1):
    """Under torchrun every global batch is shared out, at least one sample a process."""
    world = distributed.world_size()
    for used, name in ((stage1.pretrain and stage1.batch_size is not None, "pretrain_batch_size"),
                       (params["semi"] == "finetune" or (params["semi"] == "auto"
                                                          and stage1.pretrain),
                        "semi_batch_size")):
        if used and params[name] < world:
            raise ValueError(f"{name} must be at least the number of processes ({world}) "
                             f"under torchrun; got {params[name]}.")


def resolve_settings(params, device, n_samples, n_clusters=None, plan=None):
    """The frozen :class:`Settings` of checked ``params`` for ``n_samples`` samples.

    ``n_clusters`` (default: the parameter) is resolved by
    :func:`~spice_learn.cluster_count.check_n_clusters` to an int or a tuple of
    candidates; with candidates, SPICE-Semi's neighbours are resolved for the
    smallest one (call again with the chosen ``k``). Raises ValueError for fewer
    than 2 samples or more clusters than samples.
    The "auto" values that need only the parameters and ``n_samples`` are resolved
    here (views, the reliability neighbours); those that depend on the number of
    clusters too are resolved by :meth:`~spice_learn.spice_self.HeadSettings.resolved`,
    so that one :class:`Settings` serves several ``n_clusters``.
    SPICE-Semi's "auto" values follow stage 1's ``plan``
    (:class:`~spice_learn.representation.Stage1Plan`; None before stage 1 and for
    precomputed features), so a fit resolves its settings again once the plan is made.
    """
    p = params
    if n_samples < 2:
        raise ValueError(f"X must hold at least 2 samples to cluster; got n_samples={n_samples}.")
    candidates = check_n_clusters(p["n_clusters"] if n_clusters is None else n_clusters, n_samples)
    k = candidates if isinstance(candidates, int) else candidates[0]
    if not isinstance(candidates, int) and not isinstance(p["batch_size"], str):
        check_int(p["batch_size"], "batch_size", candidates[-1])
    mode = p["semi"]
    if mode == "auto":
        mode = default_semi_mode(plan is not None and plan.pretrain_epochs > 0,
                                 on_cuda(device) or (
                                     plan is not None and plan.finetune_steps is not None))
    n_weak, n_strong = default_n_views(
        n_samples, strong_used=mode == "head" or p["head_objective"] == "spice")
    hidden = p["hidden_dim"]
    views = ViewSettings(n_weak=_auto(p["n_weak_views"]) or n_weak,
                         n_strong=_auto(p["n_strong_views"]) or n_strong,
                         cache_dtype=p["cache_dtype"], embed_batch_size=p["embed_batch_size"],
                         cache_dir=p["cache_dir"], compile=bool(p["compile"]))
    heads = HeadSettings(
        objective=p["head_objective"], n_heads=p["n_heads"], hidden_dim=hidden,
        batch_size=_auto(p["batch_size"]), minibatch_size=_auto(p["minibatch_size"]),
        max_epochs=_auto(p["max_epochs"]), learning_rate=_auto(p["learning_rate"]),
        confidence_ratio=float(p["confidence_ratio"]),
        entropy_weight=_auto(p["entropy_weight"]))
    semi = None if mode is None else SemiSettings(
        mode=mode, n_neighbors=reliability_neighbors(_auto(p["n_neighbors"]), n_samples, k),
        reliability_threshold=float(p["reliability_threshold"]),
        threshold=float(p["semi_threshold"]), steps=_semi_steps(p, mode, plan),
        rounds=_auto(p["semi_rounds"]) or default_semi_rounds(mode),
        max_time=p["semi_time"], batch_size=p["semi_batch_size"],
        mu=_auto(p["semi_mu"]) or default_semi_mu(mode, device),
        learning_rate=_auto(p["semi_learning_rate"]) or default_semi_learning_rate(mode),
        ema_decay=float(p["ema_decay"]), hidden_dim=hidden,
        embed_batch_size=p["embed_batch_size"], compile=bool(p["compile"]))
    return Settings(stage1=stage1_settings(p), views=views, heads=heads, semi=semi,
                    device=device, precomputed=p["backbone"] == "precomputed",
                    n_jobs=check_n_jobs(p["n_jobs"]), n_samples=n_samples,
                    n_clusters=candidates)


def _semi_steps(params, mode, plan):
    """``semi_steps``: the given value; for "finetune" on a CPU budget the steps the
    plan left time for (at least :data:`~spice_learn.representation.MIN_FINETUNE_STEPS`);
    else :data:`~spice_learn.spice_semi.DEFAULT_SEMI_STEPS`."""
    steps = _auto(params["semi_steps"])
    if steps is None and mode == "finetune" and plan is not None and (
            plan.time_budget is not None):
        steps = plan.finetune_steps or MIN_FINETUNE_STEPS
    return steps or DEFAULT_SEMI_STEPS


def fitted_plan(settings, stage1, head_epochs):
    """The ``plan_`` of a fitted estimator: what its "auto" settings resolved to.

    Parameters
    ----------
    settings : Settings
    stage1 : Representation or None
        None for precomputed features.
    head_epochs : int
    """
    summary = stage1.summary() if stage1 is not None else {
        "backbone": None, "input_size": None, "colour": None, "pretrain_epochs": 0,
        "pretrain_batch_size": None, "pretrain_learning_rate": None, "temperature": None,
        "invariances": (), "invariance_scores": {}, "pretrain_budget": None,
        "pretrain_views_per_second": None, "finetune_steps": None}
    return {**summary, "n_weak_views": settings.views.n_weak,
            "n_strong_views": settings.views.n_strong, "head_objective": settings.heads.objective,
            "head_epochs": int(head_epochs),
            **({"semi": None} if settings.semi is None else {
                "semi": settings.semi.mode, "semi_steps": settings.semi.steps,
                "semi_rounds": settings.semi.rounds, "semi_mu": settings.semi.mu}),
            "estimated_seconds": None if stage1 is None else stage1.estimated_seconds}


# ------------------------------------------------------------------ seeds and the run
class SeedStreams(NamedTuple):
    """Independent seeds of one ``fit``, one per use, drawn from ``random_state``."""

    build: int  #: backbone initialisation
    views: int  #: augmentations of the view cache
    heads: int  #: SPICE-Self heads
    pretrain: int  #: stage-1 SimCLR
    semi: int  #: SPICE-Semi (round ``r`` uses ``semi + r``)


def seed_streams(random_state, precomputed):
    """:class:`SeedStreams` from ``random_state``, the same in every torchrun process.

    Five seeds are drawn in the order build, image views, heads, pretrain, semi;
    precomputed features have no backbone to build, and their feature-space views
    take the first seed.
    """
    try:
        rng = check_random_state(random_state)
    except ValueError:
        raise ValueError("random_state must be None, an int or a numpy RandomState; got "
                         f"{random_state!r}.") from None
    # Under torchrun rank 0's seeds (random_state=None draws other ones in each process).
    seeds = distributed.broadcast_object([int(s) for s in rng.randint(0, 2**31 - 1, size=5)])
    return SeedStreams(seeds[0], seeds[0] if precomputed else seeds[1], *seeds[2:])


@dataclass(frozen=True)
class Run:
    """Where and how a ``fit`` runs: ``device`` (this process's GPU under torchrun),
    ``seeds``, ``verbose`` (0 outside rank 0) and ``log`` (one line per finished
    stage on standard error when ``verbose``)."""

    device: torch.device
    seeds: SeedStreams
    verbose: int
    log: Callable[[str], None]


def start_run(settings, random_state, verbose):
    """Join the torchrun process group (if any) and draw the seeds: a :class:`Run`."""
    if settings.views.cache_dir is not None and random_state is None and not settings.precomputed:
        warnings.warn("cache_dir with random_state=None: the cache key includes the seed, "
                      "so this fit writes a file that no later fit reads; set "
                      "random_state to reuse the cache.", UserWarning, stacklevel=4)
    device = distributed.setup(settings.device)
    seeds = seed_streams(random_state, settings.precomputed)
    verbose = verbose if distributed.is_main_process() else 0
    start = time.perf_counter()

    def log(message):
        if verbose > 0:
            print(f"[SpiceClustering {time.perf_counter() - start:7.1f} s] {message}",
                  file=sys.stderr, flush=True)

    return Run(device, seeds, verbose, log)


def inference_device(device):
    """The device ``predict``/``transform``/``score`` run on: ``device`` when this
    machine has it, else the CPU; under torchrun this process's GPU."""
    return distributed.setup(usable_device(device))


def n_jobs_threads(n_jobs):
    """Context manager: torch CPU threads set from ``n_jobs`` for a whole call."""
    return torch_threads(check_n_jobs(n_jobs))

