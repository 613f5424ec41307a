"""How the torch work runs: device, threads, random numbers, mixed precision,
compilation and out-of-memory back-off.

Every training and embedding module takes these helpers from here, so that each
decision (which reduced precision a device gets, how a batch shrinks after a
CUDA out-of-memory error, how a seed is split into independent streams) is made
in one place. Parameter checks that name a user parameter (``device``,
``n_jobs``) stay in :mod:`spice_learn.validation`.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch

from . import distributed
from .validation import resolve_device

__all__ = ["on_cuda", "usable_device", "torch_threads", "isolated_rng", "derived_seed",
           "draw_generator", "autocast_dtype", "native_bf16", "compiled", "halve_after_oom"]

#: The first CUDA compute capability with bfloat16 arithmetic in hardware (Ampere).
BF16_MIN_CAPABILITY = (8, 0)


# --------------------------------------------------------------------------- device, threads


def on_cuda(device):
    """Whether ``device`` is a CUDA device (None: the CPU), the split of the GPU defaults."""
    return device is not None and torch.device(device).type == "cuda"


def usable_device(device):
    """The device to run ``predict``/``transform`` on: ``device`` when it exists
    here, else the CPU (a model fitted with ``device="cuda"`` on a machine without CUDA)."""
    try:
        return resolve_device(device)
    except ValueError:
        return torch.device("cpu")


@contextlib.contextmanager
def torch_threads(n_threads):
    """Run the block with ``n_threads`` torch intra-op threads (None: unchanged), and
    restore the process-wide setting afterwards.

    ``n_jobs`` of the estimators, and one thread for small memory-bound CPU ops
    (``torch_threads(1)``): such an op gains little from a second thread and, on
    a busy machine, waits for it: on 2 shared cores a bfloat16-to-float32 copy
    of 256 x 256 values took 3-5 ms with 2 threads and 6 us with one; a weak
    view of 256 images 8 ms and 0.1 ms. Embedding of ``spice_convnet4`` ran at
    0.75 of the bare forward speed before its pre- and post-processing used
    one thread.
    """
    if n_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- random numbers


@contextlib.contextmanager
def isolated_rng(device, seed):
    """Run the block with torch's global RNG (CPU, and ``device`` when it is CUDA)
    seeded with ``seed``, and restore the caller's RNG state afterwards: random ops
    inside a model (dropout, drop-path) are then reproducible and leave the user's
    RNG untouched."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def derived_seed(seed, key):
    """A seed for a stream of random numbers of its own, derived from ``seed`` and the
    int ``key`` (numpy's SeedSequence: seeds apart for every key); below 2**63."""
    # SeedSequence takes no negative numbers; torch's manual_seed does (mod 2**64)
    return int(np.random.SeedSequence([int(seed) % 2**64, key]).generate_state(1, np.uint64)[0]
               >> 1)


def draw_generator(gen, device, seed, key):
    """The generator for the random draws inside training steps on ``device``.

    On the CPU it is ``gen`` itself, so CPU results stay as they were. On CUDA it is
    a generator on the device seeded with ``derived_seed(seed, key)``: numbers drawn
    on the host must be copied to the GPU, and each copy of a pageable host tensor
    waits for the GPU to finish its queue (one such wait per draw made the training
    steps follow the CPU's pace). Processes of a torchrun job draw the same numbers
    only on GPUs of one model (CUDA's random kernels size their grid by the GPU).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return gen
    return torch.Generator(device).manual_seed(derived_seed(seed, key))


# --------------------------------------------------------------------------- mixed precision


def native_bf16(capability):
    """Whether a CUDA device of compute capability ``capability`` computes in bfloat16
    in hardware.

    Parameters
    ----------
    capability : tuple of (int, int)
        ``(major, minor)``, as :func:`torch.cuda.get_device_capability` returns.

    Returns
    -------
    bool
        True from Ampere (8.0) on. Older GPUs only emulate bfloat16, which
        :func:`torch.cuda.is_bf16_supported` counts as support; emulated
        bfloat16 is slower than float32 there, so it is not used.
    """
    return tuple(capability) >= BF16_MIN_CAPABILITY


def autocast_dtype(device, *, bf16_only=False, capability=None):
    """Reduced precision used for forward passes on ``device``, or None.

    CUDA: bfloat16 where ``device`` itself has it in hardware (:func:`native_bf16`),
    else float16. CPU: bfloat16 when the processor has native bfloat16
    instructions (AVX512-BF16 or AMX), where it is about 3x faster than float32
    for a ResNet-18 at 32 px; float32 otherwise.

    Parameters
    ----------
    device : torch.device
    bf16_only : bool
        For training, where float16 would need loss scaling: None instead of float16.
    capability : tuple of (int, int), optional
        Compute capability of a CUDA ``device``; default: asked of ``device``
        (given, it lets the decision be checked without a GPU).

    Returns
    -------
    torch.dtype or None
    """
    if device.type == "cuda":
        if capability is None:
            capability = torch.cuda.get_device_capability(device)
        if native_bf16(capability):
            return torch.bfloat16
        return None if bf16_only else torch.float16
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if any(getattr(torch.cpu, name, lambda: False)() for name in checks):
            return torch.bfloat16
    return None


# --------------------------------------------------------------------------- compile, OOM


def compiled(module, enabled):
    """``torch.compile(module)`` when ``enabled``, else ``module`` itself. The compiled
    wrapper runs the same module and shares its parameters (the wrapper's own state
    dict prefixes the keys with ``_orig_mod.``; only the module's is ever saved).
    Under torchrun the module is returned as it is, with a warning: compiling the
    DistributedDataParallel wrapper with the global-batch BatchNorm has not been
    tested."""
    if enabled and distributed.is_distributed():
        warnings.warn("compile=True is ignored under torchrun (not tested there yet); "
                      "running eagerly.", UserWarning, stacklevel=3)
        return module
    return torch.compile(module) if enabled else module


def halve_after_oom(batch_size, device, what):
    """Free cached GPU memory and return half of ``batch_size`` (at least 1), with a warning."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    new = max(1, batch_size // 2)
    warnings.warn(f"CUDA out of memory in {what}; continuing with batches of {new} instead "
                  f"of {batch_size}.", RuntimeWarning, stacklevel=3)
    return new
