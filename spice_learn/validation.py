"""Parameter checks shared by the estimators: clear errors that name the parameter.

What the checked values then do (the device a fitted model runs on, the thread
count of a block) is :mod:`spice_learn.runtime`'s business."""

from __future__ import annotations

import numbers
import os

import numpy as np
import torch
from sklearn.utils.validation import check_scalar

__all__ = ["check_int", "check_real", "resolve_device", "check_n_jobs",
           "check_writable_dir", "check_compile"]


def check_int(value, name, min_val):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {value!r} ({type(value).__name__}).")
    if value < min_val:
        raise ValueError(f"{name} must be >= {min_val}; got {value}.")
    return int(value)


def check_real(value, name, min_val, max_val, include_boundaries):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__}).")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}.")
    check_scalar(value, name, numbers.Real, min_val=min_val, max_val=max_val,
                 include_boundaries=include_boundaries)
    return float(value)


def resolve_device(device):
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device; got {device!r}."
        ) from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device; got {device!r}.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available.")
    return resolved


def check_n_jobs(n_jobs):
    """``n_jobs``: None (torch's current setting), a positive int, or -1 (all CPU cores)."""
    if n_jobs is None:
        return None
    if check_int(n_jobs, "n_jobs", -1) == -1:
        return os.cpu_count() or 1
    if n_jobs == 0:
        raise ValueError("n_jobs must be None, -1 or a positive int; got 0.")
    return int(n_jobs)


def check_writable_dir(path, name):
    """Check that ``path`` is, or can be created as, a writable folder (nothing is created).

    Raises TypeError when ``path`` is not path-like and ValueError when a file
    is in the way or the folder (or its nearest existing parent) is not writable.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be None or a folder path; got {type(path).__name__}.")
    folder = os.path.abspath(os.fspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{name}={os.fspath(path)!r} cannot be a folder: {existing!r} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={os.fspath(path)!r} is not writable ({existing!r} does not "
                         "allow creating files).")


def check_compile(value):
    """``compile`` as a bool; TypeError for anything but True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"compile must be True or False; got {value!r}.")
    return bool(value)
