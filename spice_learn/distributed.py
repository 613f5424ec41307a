"""Several processes, one result: helpers for runs launched with ``torchrun``.

A user runs the same script with ``torchrun --nproc_per_node=N script.py``; each
process calls :meth:`SpiceClustering.fit <spice_learn.SpiceClustering.fit>`, which
calls :func:`setup`. The training loops then split every global batch into
``N`` contiguous shards (:func:`shard_range`), one per process, so that the
global batch, the augmentation draws, the number of steps and the learning-rate
schedule are those of one process. What makes the gradient the one-process
gradient:

* every differentiable collective here (:func:`gather_with_grad`, the statistics
  of :func:`synced_batchnorm`) has the backward of the objective
  ``sum over ranks of each rank's loss`` (gradients are summed over ranks);
* DistributedDataParallel averages the parameter gradients over the ``N`` ranks;
* so each rank's loss must be ``N`` times its share of the global loss: a loss
  that every rank computes in full (NT-Xent on the gathered batch) needs no
  factor, a loss over the rank's own samples is scaled by
  ``N * n_local / n_global`` (see :mod:`spice_learn.spice_semi`).

With one process (no launch, or ``WORLD_SIZE=1``) none of this runs and the
code paths are those of a plain run.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["launched_with_torchrun", "setup", "rank_device", "is_distributed", "world_size",
           "rank", "is_main_process", "shard_range", "all_gather_rows", "gather_with_grad",
           "broadcast_module", "broadcast_object", "all_gather_object", "synced_batchnorm",
           "wrap_ddp"]

#: Exactly these classes get synchronised statistics (subclasses such as timm's
#: ``BatchNormAct2d`` have their own ``forward`` and keep per-process statistics).
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def launched_with_torchrun():
    """Whether the environment describes a multi-process launch (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device):
    """Join the process group of a ``torchrun`` launch and return this process's device.

    Initialises the default process group when the environment describes a
    launch with more than one process and no group exists yet: NCCL for CUDA
    devices, gloo for the CPU. A CUDA device becomes ``cuda:LOCAL_RANK`` (one
    GPU per process, see :func:`rank_device`). Outside such a launch ``device``
    is returned unchanged.

    Parameters
    ----------
    device : torch.device
        The resolved ``device`` parameter of the estimator.

    Returns
    -------
    device : torch.device
    """
    if launched_with_torchrun():
        device = rank_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if launched_with_torchrun() and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def rank_device(device, local_rank):
    """The device of the torchrun process with local rank ``local_rank``.

    Every process of a launch resolves the same ``device`` parameter; kept as
    it is, ``device="cuda:0"`` would put all processes on GPU 0. A CUDA device
    therefore becomes ``cuda:<local_rank>`` (one GPU per process, as torchrun
    intends), with a warning when the user named another index. A CPU device
    is returned unchanged.

    Parameters
    ----------
    device : torch.device
    local_rank : int
        This process's ``LOCAL_RANK`` (its index among the processes of its machine).

    Returns
    -------
    device : torch.device

    Raises
    ------
    ValueError
        When the machine has CUDA but fewer GPUs than ``local_rank + 1``.
    """
    if device.type != "cuda":
        return device
    if torch.cuda.is_available() and local_rank >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r}: this torchrun process has local rank "
                         f"{local_rank}, but the machine has {torch.cuda.device_count()} "
                         "GPU(s); start at most one process per GPU (--nproc_per_node), or "
                         "pass device='cpu' to run the processes on the CPU.")
    if device.index is not None and device.index != local_rank:
        warnings.warn(f"device={str(device)!r} is replaced by 'cuda:{local_rank}' in the "
                      f"torchrun process of local rank {local_rank}: each process uses the "
                      "GPU of its local rank.", UserWarning, stacklevel=3)
    return torch.device("cuda", local_rank)


def is_distributed():
    """Whether an initialised process group holds more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size():
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank():
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process():
    """Rank 0: the process that prints, shows progress bars and writes checkpoints."""
    return rank() == 0


def shard_range(n, *, rank=None, world_size=None, block=1):
    """Contiguous ``[start, stop)`` of ``n`` items owned by ``rank``.

    The items are cut into blocks of ``block`` (the last may be shorter), and
    the blocks are shared out as evenly as possible, lower ranks taking one
    more when they do not divide; concatenating the ranges of ranks
    ``0 .. world_size - 1`` gives ``0 .. n - 1`` once each, in order.

    Parameters
    ----------
    n : int
    rank, world_size : int or None
        Default: those of the current process group.
    block : int
        Shard boundaries fall on multiples of ``block``.

    Returns
    -------
    start, stop : int
    """
    rank = globals()["rank"]() if rank is None else rank
    world_size = globals()["world_size"]() if world_size is None else world_size
    n_blocks = -(-n // block)
    base, extra = divmod(n_blocks, world_size)
    first = rank * base + min(rank, extra)
    last = first + base + (rank < extra)
    return min(first * block, n), min(last * block, n)


def _comm_device(tensor):
    """NCCL moves only CUDA tensors; gloo works on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device if tensor.device.type == "cpu" else torch.device("cpu")


def all_gather_rows(tensor):
    """Concatenate every rank's ``tensor`` along dim 0, in rank order.

    Shards may have different numbers of rows (padded for the transfer). Every
    rank gets the full result, on the device ``tensor`` was on. Without a
    process group ``tensor`` itself is returned.
    """
    if not is_distributed():
        return tensor
    comm = _comm_device(tensor)
    local = tensor.to(comm).contiguous()
    sizes = [torch.zeros((), dtype=torch.long, device=comm) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor(local.shape[0], device=comm))
    sizes = [int(s) for s in sizes]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(tensor.device)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients over ranks and keeps this
    rank's rows (the gradient of ``sum over ranks of each rank's loss``)."""

    @staticmethod
    def forward(ctx, tensor):
        ctx.sizes = [int(s) for s in all_gather_rows(
            torch.tensor([tensor.shape[0]], device=tensor.device))]
        ctx.rank = rank()
        return all_gather_rows(tensor)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        comm = _comm_device(grad)
        summed = grad.to(comm)
        dist.all_reduce(summed)
        start = sum(ctx.sizes[: ctx.rank])
        return summed[start : start + ctx.sizes[ctx.rank]].to(grad.device)


def gather_with_grad(tensor):
    """:func:`all_gather_rows` through which gradients flow back to each row's owner."""
    return _GatherWithGrad.apply(tensor) if is_distributed() else tensor


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, with the summed gradient as backward."""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone().to(_comm_device(tensor))
        dist.all_reduce(out)
        return out.to(tensor.device)

    @staticmethod
    def backward(ctx, grad):
        out = grad.clone().to(_comm_device(grad))
        dist.all_reduce(out)
        return out.to(grad.device)


def _global_batch_norm(bn, x):
    """``bn``'s training forward with mean and variance over every rank's batch.

    Two passes (mean, then the squared deviations), each one all-reduce of a
    ``(C + 1)`` vector, in float32; the running statistics get the unbiased
    variance as in :class:`torch.nn.BatchNorm2d`.
    """
    if not (bn.training or bn.running_mean is None):
        return type(bn).forward(bn, x)
    dims = [d for d in range(x.ndim) if d != 1]
    shape = [1, -1] + [1] * (x.ndim - 2)
    xf = x.float()
    count = torch.tensor([x.numel() / x.shape[1]], device=x.device)
    sums = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
    total = sums[-1].detach()
    mean = sums[:-1] / total
    centred = xf - mean.view(shape)
    var = _AllReduceSum.apply((centred * centred).sum(dims)) / total
    if bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                      else bn.momentum)
            bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), factor)
            unbiased = var.detach() * total / max(float(total) - 1.0, 1.0)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


@contextlib.contextmanager
def synced_batchnorm(module, device):
    """Within the block, ``module``'s BatchNorm layers normalise training batches
    with the statistics of the global batch (all ranks together).

    On CUDA the layers are :class:`torch.nn.SyncBatchNorm` for the duration of
    the block (made by :meth:`~torch.nn.SyncBatchNorm.convert_sync_batchnorm`,
    sharing the layers' parameters and buffers) and the original layers are put
    back afterwards. :class:`torch.nn.SyncBatchNorm` refuses CPU tensors, so on
    the CPU (gloo) each layer's ``forward`` is replaced instead, by
    :func:`_global_batch_norm`, which computes the same statistics with two
    all-reduces: this CPU-only fallback is what the gloo tests run.

    Convert first, then wrap: pass the bare module, and give the module the
    block yields to :func:`wrap_ddp` inside the block (DistributedDataParallel
    expects SyncBatchNorm layers to exist when it wraps a module).

    Subclasses of the BatchNorm classes (timm's ``BatchNormAct2d``, whose
    ``forward`` adds an activation) keep per-process statistics, with a
    warning. Without a process group the block runs unchanged.

    Parameters
    ----------
    module : torch.nn.Module
    device : torch.device
        Where the module runs; CUDA selects :class:`torch.nn.SyncBatchNorm`.

    Yields
    ------
    module : torch.nn.Module
        ``module`` itself, or its SyncBatchNorm copy when ``module`` is a
        BatchNorm layer on CUDA.
    """
    if not is_distributed():
        yield module
        return
    for m in module.modules():
        if (isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in _BATCHNORMS
                and not isinstance(m, nn.SyncBatchNorm) and is_main_process()):
            warnings.warn(f"{type(m).__name__} layers keep per-process batch statistics "
                          "under torchrun.", RuntimeWarning, stacklevel=3)
    if device.type == "cuda":
        with _sync_batchnorm_layers(module) as synced:
            yield synced
        return
    patched = [m for m in module.modules() if type(m) in _BATCHNORMS]
    for m in patched:
        m.forward = _BoundNorm(m)
    try:
        yield module
    finally:
        for m in patched:
            del m.forward


@contextlib.contextmanager
def _sync_batchnorm_layers(module):
    """Swap every exact BatchNorm layer of ``module`` for a
    :class:`torch.nn.SyncBatchNorm` that shares its parameters and buffers, and
    swap the originals back on exit (they then hold the trained values)."""
    if type(module) in _BATCHNORMS:
        yield nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return
    swapped = [(parent, name, child) for parent in module.modules()
               for name, child in parent.named_children() if type(child) in _BATCHNORMS]
    for parent, name, child in swapped:
        setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    try:
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class _BoundNorm:
    """``forward`` of a BatchNorm layer inside :func:`synced_batchnorm` (a class
    rather than a closure so that ``copy.deepcopy`` of the module still works)."""

    def __init__(self, bn):
        self.bn = bn

    def __call__(self, x):
        return _global_batch_norm(self.bn, x)


def wrap_ddp(module, device):
    """``module`` in DistributedDataParallel (one device per process), or itself
    without a process group."""
    if not is_distributed():
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


@torch.no_grad()
def broadcast_module(module, src=0):
    """Copy ``src``'s parameters and buffers into ``module`` on every rank."""
    if not is_distributed():
        return module
    for tensor in list(module.parameters()) + list(module.buffers()):
        comm = tensor.detach().to(_comm_device(tensor)).contiguous()
        dist.broadcast(comm, src)
        tensor.copy_(comm)
    return module


def broadcast_object(obj, src=0):
    """``src``'s picklable ``obj`` on every rank (itself without a process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_gather_object(obj):
    """Every rank's picklable ``obj``, as a list in rank order (``[obj]`` without a
    process group)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
