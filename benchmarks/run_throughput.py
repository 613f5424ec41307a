"""Throughput (images/s) of each stage, next to the bare forward pass of the same model.

For the backbones ``backbone="auto"`` picks (``spice_convnet4`` at 16 px for 8-28 px
images, ``resnet18`` with the CIFAR stem at 32 px), on random uint8 images:

(a) embedding: :func:`spice_learn.embedding.embed_images` (uint8 images in, L2-normalised
    float32 embeddings out, on the CPU) against the bare forward pass of the same module
    on ready normalised float batches already on the device, with the same batch size,
    autocast dtype and channels_last layout; the ratio of the two (goal: >= 0.9);
(b) ``SpiceClustering.predict`` on a fitted model, against the same bare forward pass;
(c) pretraining: augmented views per second through one SimCLR epoch;
(d) head training: cached samples per second through SPICE-Self epochs (default heads,
    2 weak and 4 strong views of random embeddings), with the cache in memory and in
    ``cache_dir`` (rows read per minibatch from the file);
(e) streamed embedding: the images of (a) written as PNG files and embedded from an
    :class:`~spice_learn.ImageStream` of the folder (decoded batch by batch in a
    DataLoader with 0 and 2 worker processes), against (a) on the tensor in memory.

Every timing follows one untimed warm-up call. Results go to the ``throughput``
section of docs/benchmarks.md (not with ``--no-doc``).

Usage::

    python benchmarks/run_throughput.py                    # CPU
    python benchmarks/run_throughput.py --device cuda --n 8192
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402

from spice_learn import ImageStream, SpiceClustering  # noqa: E402
from spice_learn.backbones import build_backbone  # noqa: E402
from spice_learn.disk_cache import DiskArray  # noqa: E402
from spice_learn.embedding import ViewCache, autocast_dtype, embed_images  # noqa: E402
from spice_learn.heads import resolve_hidden_dim  # noqa: E402
from spice_learn.pretrain import pretrain_simclr  # noqa: E402
from spice_learn.spice_self import train_heads  # noqa: E402

#: (model name, image size): what ``backbone="auto"`` picks for small and 32 px images.
MODELS = [("spice_convnet4", 16), ("resnet18", 32)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, warm_up=None, repeats=3):
    """Fewest seconds of ``repeats`` calls of ``fn()``, after one untimed call of
    ``warm_up`` (default: ``fn``)."""
    (warm_up or fn)()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bare_forward(extractor, images, batch_size, device):
    """The module alone on ready normalised batches on ``device``: a function to time."""
    module = extractor.module.to(device).eval().to(memory_format=torch.channels_last)
    mean = torch.tensor(extractor.mean).view(1, 3, 1, 1)
    std = torch.tensor(extractor.std).view(1, 3, 1, 1)
    batches = [((images[s : s + batch_size].float() / 255 - mean) / std)
               .to(device).contiguous(memory_format=torch.channels_last)
               for s in range(0, len(images), batch_size)]
    amp = autocast_dtype(device)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp,
                                                    enabled=amp is not None):
            for x in batches:
                module(x)
    return run


def _fitted_model(extractor, images, batch_size, device):
    return SpiceClustering(10, backbone=extractor, pretrain=None, n_heads=1, max_epochs=1,
                           n_weak_views=1, n_strong_views=1, semi=None,
                           embed_batch_size=batch_size, device=device,
                           random_state=0).fit(images[:512].numpy())


def pretrain_seconds(extractor, images, batch_size, device):
    def run(images=images):
        pretrain_simclr(copy.deepcopy(extractor), images, max_epochs=1, max_time=None,
                        batch_size=batch_size, learning_rate=1e-3, temperature=0.5,
                        projection_dim=128, flip=True, seed=0, device=device)
    return _timed(run, device, warm_up=lambda: run(images[: 2 * batch_size]), repeats=1)


def _random_views(n, dim, n_weak=2, n_strong=4):
    """Unit-norm random embeddings of shape ``(1 + n_weak + n_strong, n, dim)``."""
    return F.normalize(torch.randn(1 + n_weak + n_strong, n, dim,
                                   generator=torch.Generator().manual_seed(0)), dim=2)


def head_seconds(views, epochs, device, folder):
    """Seconds of ``epochs`` SPICE-Self epochs on ``views`` in memory and in a file."""
    store = DiskArray.create(Path(folder) / "views.npy", views.shape, views.dtype)
    for v in range(views.shape[0]):
        store[v, 0 : views.shape[1]] = views[v]
    times = {}
    for where, array in (("memory", views), ("cache_dir", DiskArray.open(store.path))):
        cache = ViewCache(array[0], array[1:3], array[3:])

        def run(cache=cache):
            train_heads(cache, n_clusters=10, n_heads=10,
                        hidden_dim=resolve_hidden_dim("auto", views.shape[2]),
                        batch_size=1000, minibatch_size=128, max_epochs=epochs,
                        learning_rate=5e-3, confidence_ratio=0.5, entropy_weight=0.0,
                        seed=0, device=device)
        times[where] = _timed(run, device, repeats=1)
    return times


def stream_seconds(extractor, images, batch_size, device, folder, workers):
    """Seconds of embedding ``images`` from PNG files through an ImageStream, for each
    number of DataLoader workers in ``workers``."""
    from PIL import Image

    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(Path(folder) / f"{i:06d}.png")
    return {w: _timed(lambda w=w: embed_images(extractor, ImageStream(folder, num_workers=w),
                                               batch_size=batch_size, device=device), device)
            for w in workers}


def measure(name, size, n, batch_size, device, head_n, head_epochs):
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    extractor = build_backbone(name, None, (size, size), seed=0)
    bare = _timed(bare_forward(extractor, images, batch_size, device), device)
    embed = _timed(lambda: embed_images(extractor, images, batch_size=batch_size,
                                        device=device), device)
    model = _fitted_model(extractor, images, batch_size, device)
    X = images.numpy()
    predict = _timed(lambda: model.predict(X), device)
    pretrain = pretrain_seconds(extractor, images, min(256, n), device)
    with tempfile.TemporaryDirectory() as folder:
        streamed = stream_seconds(extractor, images, batch_size, device, folder, (0, 2))
    with tempfile.TemporaryDirectory() as folder:
        heads = head_seconds(_random_views(head_n, extractor.feature_dim), head_epochs,
                             device, folder)
    row = {"model": f"{name} ({extractor.input_size[0]} px, D={extractor.feature_dim})",
           "bare": n / bare, "embed": n / embed, "predict": n / predict,
           "pretrain": 2 * n / pretrain,
           "heads_memory": head_n * head_epochs / heads["memory"],
           "heads_disk": head_n * head_epochs / heads["cache_dir"],
           "stream0": n / streamed[0], "stream2": n / streamed[2]}
    print(row, flush=True)
    return row


def report(rows, args, device):
    amp = autocast_dtype(device)
    lines = [
        "## Throughput of each stage",
        "",
        f"Written by `python benchmarks/run_throughput.py --device {device.type} --n {args.n} "
        f"--batch-size {args.batch_size}`; {machine()}; device {device}, autocast "
        f"{amp}, batch size {args.batch_size}, {args.n} random uint8 images. Bare forward: "
        "the backbone module alone on ready normalised channels_last batches on the device "
        "(same batch size and autocast); embedding: `embed_images` from uint8 images to "
        "normalised embeddings on the CPU; predict: `SpiceClustering.predict` (embedding "
        "and head); pretraining: augmented views per second through one SimCLR epoch "
        "(two views per image, forward and backward); heads: samples per second through "
        f"{args.head_epochs} SPICE-Self epochs on {args.head_n:,} cached samples (10 heads, "
        "2 weak and 4 strong views), the cache in memory or read from a `cache_dir` file. "
        "Streamed: the same images as PNG files, embedded from an `ImageStream` of the "
        "folder (decoded batch by batch by a DataLoader with 0 or 2 worker processes); "
        "ratio to the embedding from the tensor in memory. "
        "Each number is the fastest of 3 calls after a warm-up call (pretraining and "
        "heads: one call after the warm-up); all ratios come from the same run. "
        "On a 2-core machine shared with other jobs ratios above 1 show the noise of "
        "such runs (about 20 %).",
        "",
        "| model | bare forward img/s | embedding img/s (ratio) | predict img/s (ratio) | "
        "pretraining views/s | heads samples/s, memory | heads samples/s, cache_dir | "
        "streamed img/s, 0 workers (ratio) | streamed img/s, 2 workers (ratio) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['bare']:,.0f} | {r['embed']:,.0f} "
            f"({r['embed'] / r['bare']:.2f}) | {r['predict']:,.0f} "
            f"({r['predict'] / r['bare']:.2f}) | {r['pretrain']:,.0f} | "
            f"{r['heads_memory']:,.0f} | {r['heads_disk']:,.0f} | "
            f"{r['stream0']:,.0f} ({r['stream0'] / r['embed']:.2f}) | "
            f"{r['stream2']:,.0f} ({r['stream2'] / r['embed']:.2f}) |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--n", type=int, default=1024, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--head-n", type=int, default=10_000, help="cached samples for (d)")
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=[m for m, _ in MODELS],
                        choices=[m for m, _ in MODELS])
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{machine()}; device {device}, autocast {autocast_dtype(device)}, "
          f"batch size {args.batch_size}", flush=True)
    rows = [measure(name, size, args.n, args.batch_size, device, args.head_n,
                    args.head_epochs)
            for name, size in MODELS if name in args.models]
    text = report(rows, args, device)
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('throughput', text)}")


if __name__ == "__main__":
    main()
