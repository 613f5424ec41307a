"""Cost per image of each stage, how it grows with N, and what a 1M / 10M-image job needs.

For each N in ``--n`` (the first N MNIST images, 28 px, with the backbone that
``backbone="auto"`` picks for them: ``spice_convnet4`` at 16 px, random weights,
since no stage's cost depends on the weights) and default ``SpiceClustering``
settings, each stage runs in a fresh subprocess:

(a) ``embed``: :func:`spice_learn.embedding.embed_images` of the N originals (one view);
(v) ``views``: :func:`spice_learn.embedding.embed_views` of the default cached views
    (original + weak + strong, the augmentations included) of ``--view-n`` of the images;
(b) ``pretrain``: ``--pretrain-steps`` SimCLR steps of the default batch with
    :func:`spice_learn.pretrain.pretrain_simclr`, giving seconds per image-epoch;
(c) ``heads``: one SPICE-Self epoch of :func:`spice_learn.spice_self.train_heads` (default
    heads and batch sizes) on a view cache of the default shape and dtype for N (the
    embeddings of (a) and feature-space views of them, as ``backbone="precomputed"``
    builds), in memory and from a float16 ``cache_dir``-style file, and the head
    selection pass (``M = N``);
(d) ``neighbors``: :func:`spice_learn.neighbors.nearest_neighbors` of the N embeddings
    (``--n-neighbors``, the SPICE-Semi neighbour search);
(e) the view-cache size (:func:`spice_learn.embedding.cache_nbytes`) and, for every
    subprocess, its peak resident set and the peak extra resident set of the timed
    calls: the kernel's high-water mark (``VmHWM``), reset just before them through
    ``/proc/self/clear_refs``, minus the resident set then. (A thread sampling the
    resident set every few ms, as in ``run_neighbors.py``, competes for the GIL and
    the 2 cores with the many small ops of the head training and slowed it.)

Every timing follows one untimed warm-up call on a small part of the data; (v), (b)
and (c) in memory are the best of ``--repeats`` timed calls, the others one call. The
embeddings of (a) go to a temporary folder (outside the repository) for (c) and (d).
From the largest N the script extrapolates the hours, memory and disk of a 1M- and a
10M-image fit and writes everything to ``docs/scaling.md`` (``--doc``), and the raw
numbers to ``benchmarks/results/scaling.json``.

Usage::

    SPICE_LEARN_DATA=/path/to/shared/data python benchmarks/run_scaling.py
    python benchmarks/run_scaling.py --device cuda --doc docs/scaling_cuda.md
    python benchmarks/run_scaling.py --render-only   # the page again from the saved numbers
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import machine  # noqa: E402
from run_neighbors import _rss_mib  # noqa: E402

DOC = HERE.parent / "docs" / "scaling.md"
RESULTS = HERE / "results" / "scaling.json"
STAGES = ("embed", "views", "pretrain", "heads", "neighbors")
TARGETS = (1_000_000, 10_000_000)
N_CLUSTERS = 10


# ----------------------------------------------------------------- worker side
class PeakRSS:
    """Peak resident set (MiB) inside the block, minus the one before it (``extra``).

    The kernel's high-water mark ``VmHWM`` is reset to the current resident set on
    entry (``/proc/self/clear_refs``, Linux 4.0+) and read on exit: exact, and no
    sampling thread competes with the timed code. Where the reset is refused, the
    mark is the process's peak so far (an upper bound; ``reset`` is then False).
    """

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.before = _rss_mib()
        return self

    def __exit__(self, *exc):
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        self.peak = max(int(hwm.split()[1]) / 1024, _rss_mib())
        self.extra = self.peak - self.before


def best_of(fn, device, warm_up, repeats):
    """Fewest seconds of ``repeats`` calls of ``fn`` after one untimed ``warm_up()``."""
    from run_throughput import _timed

    return min(_timed(fn, device, warm_up=warm_up if i == 0 else (lambda: None))
               for i in range(repeats))


def default_settings(n, dim):
    """The settings a default ``SpiceClustering(10)`` fit resolves for N images of dim D
    (None: resolved later from the data, as the estimator does)."""
    from spice_learn import SpiceClustering
    from spice_learn.settings import check_settings, resolve_settings
    from spice_learn.spice_self import default_batch_size
    from spice_learn.view_cache import default_cache_dtype

    params = SpiceClustering(N_CLUSTERS).get_params()
    resolved = resolve_settings(params, check_settings(params), n)
    heads, views = resolved.heads.resolved(n, N_CLUSTERS, dim), resolved.views
    weight = heads.entropy_weight  # "auto": SCAN's candidates, each trained in turn
    n_weights = len(weight) if isinstance(weight, tuple) else 1
    weight = weight[0] if isinstance(weight, tuple) else weight  # time one epoch at the first
    return {**params, "n_weak_views": views.n_weak, "n_strong_views": views.n_strong,
            "n_views": views.n_views, "batch_size": default_batch_size(N_CLUSTERS),
            "minibatch_size": resolved.heads.minibatch_size,
            "max_epochs": resolved.heads.max_epochs, "learning_rate": heads.learning_rate,
            "entropy_weight": weight, "n_entropy_weights": n_weights,
            "hidden_dim": heads.hidden_dim, "pretrain_batch_size": None,
            "pretrain_epochs": None, "device": resolved.device,
            "cache_dtype": default_cache_dtype(views.cache_dtype, n, views.n_views, dim)}


def _load(n):
    import datasets as data
    from spice_learn.backbones import build_backbone
    from spice_learn.image_input import as_images
    from spice_learn.representation import resolve_backbone

    x, _ = data.mnist()
    if n > len(x):
        raise SystemExit(f"N={n}: MNIST has only {len(x)} images")
    images = as_images(x[:n])
    size = tuple(images.shape[-2:])
    return images, build_backbone(resolve_backbone("auto", size), None, size, seed=0)


def _embeddings(workdir, n):
    return np.load(Path(workdir) / f"embeddings-{n}.npy")


def worker(stage, n, device, args):
    import torch
    from run_throughput import _timed, pretrain_seconds

    from spice_learn.cache_augment import strong_transform, weak_transform
    from spice_learn.disk_cache import DiskArray
    from spice_learn.embedding import ViewCache, cache_nbytes, embed_images, embed_views
    from spice_learn.neighbors import nearest_neighbors
    from spice_learn.representation import resolve_flip
    from spice_learn.spice_self import head_selection_losses, train_heads

    device = torch.device(device)
    out = {"stage": stage, "n": n, "threads": torch.get_num_threads()}
    if stage in ("embed", "views", "pretrain"):
        images, extractor = _load(n)
        dim = extractor.feature_dim
        out.update(model=extractor.name, input_px=extractor.input_size[0], dim=dim,
                   image_bytes=images.numel() * images.element_size() / n)
    else:
        features = torch.from_numpy(_embeddings(args.workdir, n))
        dim = features.shape[1]
    s = default_settings(n, dim)

    if stage == "embed":
        result = {}

        def run():
            result["x"] = embed_images(extractor, images, batch_size=s["embed_batch_size"],
                                       device=device)
        with PeakRSS() as rss:
            seconds = _timed(run, device, warm_up=lambda: embed_images(
                extractor, images[: s["embed_batch_size"]],
                batch_size=s["embed_batch_size"], device=device))
        np.save(Path(args.workdir) / f"embeddings-{n}.npy", result["x"].numpy())
        out.update(seconds=seconds, items=n, per_item=seconds / n)
    elif stage == "views":
        flip = resolve_flip(s["flip"], extractor)
        size = extractor.input_size
        transforms = ([None] + [weak_transform(size, flip=flip)] * s["n_weak_views"]
                      + [strong_transform(size, flip=flip)] * s["n_strong_views"])
        m = min(n, args.view_n)

        def run(count=m):
            embed_views(extractor, images[:count], transforms,
                        batch_size=s["embed_batch_size"], device=device,
                        dtype=s["cache_dtype"], seed=0)
        with PeakRSS() as rss:
            seconds = best_of(run, device, lambda: run(min(m, 64)), args.repeats)
        out.update(seconds=seconds, items=m, per_item=seconds / m, n_views=len(transforms))
    elif stage == "pretrain":
        batch = s["pretrain_batch_size"]
        k = min(args.pretrain_steps, n // batch)
        subset = images[torch.randperm(n, generator=torch.Generator().manual_seed(0))[: k * batch]]
        with PeakRSS() as rss:  # one epoch over k * batch images = k steps, after 2 warm-up steps
            seconds = min(pretrain_seconds(extractor, subset, batch, device)
                          for _ in range(args.repeats))
        out.update(seconds=seconds, items=k * batch, per_item=seconds / (k * batch), steps=k,
                   batch=batch)
    elif stage == "heads":
        from spice_learn.view_cache import feature_cache

        cache = feature_cache(features, s["n_weak_views"], s["n_strong_views"], seed=0)
        dtype = s["cache_dtype"]
        cache = ViewCache(cache.original.to(dtype), cache.weak.to(dtype), cache.strong.to(dtype))
        common = dict(n_clusters=N_CLUSTERS, n_heads=s["n_heads"], hidden_dim=s["hidden_dim"],
                      batch_size=s["batch_size"], minibatch_size=s["minibatch_size"],
                      max_epochs=1, learning_rate=s["learning_rate"],
                      confidence_ratio=s["confidence_ratio"],
                      entropy_weight=s["entropy_weight"], seed=0, device=device)
        small = min(n, 2 * s["batch_size"])
        warm = ViewCache(cache.original[:small], cache.weak[:, :small], cache.strong[:, :small])
        trained = {}

        def run(c=cache):
            trained["heads"] = train_heads(c, **common)[0]
        with PeakRSS() as rss:
            seconds = best_of(run, device, lambda: run(warm), args.repeats)
            t = time.perf_counter()
            head_selection_losses(trained["heads"], cache,
                                  confidence_ratio=s["confidence_ratio"])
            select = time.perf_counter() - t
        disk = None
        if args.disk_heads == "all" or (args.disk_heads == "smallest" and n == args.smallest):
            # the same views in a float16 file, read per minibatch
            views = torch.cat([cache.original[None], cache.weak, cache.strong])
            store = DiskArray.create(Path(args.workdir) / f"views-{n}.npy", views.shape,
                                     torch.float16)
            for v in range(views.shape[0]):
                store[v, 0:n] = views[v]
            del views
            on_disk = DiskArray.open(store.path)
            nw = s["n_weak_views"]
            disk = best_of(lambda: run(ViewCache(on_disk[0], on_disk[1 : 1 + nw],
                                                 on_disk[1 + nw :])), device, lambda: None, 1)
            store.path.unlink()
        out.update(seconds=seconds, items=n, per_item=seconds / n, select_seconds=select,
                   disk_seconds=disk, n_views=s["n_views"], dtype=str(dtype),
                   cache_bytes=cache_nbytes(n, s["n_views"], dim, dtype),
                   cache_bytes_f16=cache_nbytes(n, s["n_views"], dim, torch.float16))
    elif stage == "neighbors":
        k = args.n_neighbors
        with PeakRSS() as rss:
            # The blocked torch search, whether or not faiss is installed (the plan's
            # block-size remarks are about it; benchmarks/run_neighbors.py compares both).
            seconds = _timed(lambda: nearest_neighbors(features, k, device=device,
                                                       backend="torch"), device,
                             warm_up=lambda: nearest_neighbors(features[:2000], k,
                                                               device=device, backend="torch"))
        out.update(seconds=seconds, items=n, per_item=seconds / n, n_neighbors=k)
    out.update(dim=dim, rss_before_mib=rss.before, peak_extra_mib=rss.extra,
               hwm_reset=rss.reset,
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               settings={key: s[key] for key in (
                   "embed_batch_size", "pretrain_batch_size", "pretrain_epochs", "n_heads",
                   "batch_size", "minibatch_size", "max_epochs", "n_weak_views",
                   "n_strong_views", "semi_steps", "semi_rounds")})
    print("RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------- parent side
def run_stage(stage, n, args):
    cmd = [sys.executable, __file__, "--worker", stage, "--n", str(n), "--device", args.device,
           "--workdir", args.workdir, "--view-n", str(args.view_n),
           "--pretrain-steps", str(args.pretrain_steps), "--n-neighbors", str(args.n_neighbors),
           "--repeats", str(args.repeats)]
    cmd += ["--disk-heads", args.disk_heads, "--smallest", str(min(args.n))]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not line:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"stage {stage} at N={n} failed")
    row = json.loads(line[-1][len("RESULT "):])
    row["process_seconds"] = time.perf_counter() - t
    return row


def _fmt_bytes(b):
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b / 1e3:.0f} kB"


def _fmt_hours(seconds):
    h = seconds / 3600
    return f"{h:,.0f} h" if h >= 10 else f"{h:.1f} h" if h >= 0.1 else f"{seconds / 60:.1f} min"


def _exponent(ns, ys):
    """Slope of log y against log N (least squares): 1 = linear, 2 = quadratic."""
    return float(np.polyfit(np.log(ns), np.log(ys), 1)[0])


def _linear(ns, ys):
    """Least-squares ``(intercept, slope)`` of y against N."""
    slope, intercept = np.polyfit(np.asarray(ns, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def plan(rows, n0):
    """Extrapolated seconds and bytes of a default fit at each target N, from N = n0."""
    by = {(r["stage"], r["n"]): r for r in rows}
    e, v, p, h, nn = (by[stage, n0] for stage in STAGES)
    st = e["settings"]
    dim, n_s = e["dim"], nn["n_neighbors"]
    out = []
    for n in TARGETS:
        sec = {
            "pretrain": p["per_item"] * n * st["pretrain_epochs"],
            "views": v["per_item"] * n,
            "heads": (h["per_item"] * n * st["max_epochs"] + h["select_seconds"] * n / n0)
            * st.get("n_entropy_weights", 1),
            "neighbors": nn["seconds"] * (n / n0) ** 2,
            "embed": e["per_item"] * n,
        }
        byt = {
            "images": e["image_bytes"] * n,
            "cache_f16": h["cache_bytes_f16"] / n0 * n,
            "embeddings": 4 * dim * n,
            "neighbors": 8 * n_s * n,
        }
        disk = [r for r in rows if r["stage"] == "heads" and r["disk_seconds"] is not None]
        if disk:  # per sample from the largest N with a from-file epoch
            d = max(disk, key=lambda r: r["n"])
            sec["heads_disk"] = (d["disk_seconds"] / d["n"] * n * st["max_epochs"]
                                 + h["select_seconds"] * n / n0)
        out.append({"n": n, "seconds": sec, "bytes": byt,
                    "fit_seconds": sum(sec[k] for k in ("pretrain", "views", "heads",
                                                          "neighbors"))})
    # N at which the neighbour search (a N^2) costs as much as pretraining (b N).
    crossover = (p["per_item"] * st["pretrain_epochs"]) / (nn["seconds"] / n0**2)
    return out, crossover


def render(rows, args, wall, date, load, where):
    by = {(r["stage"], r["n"]): r for r in rows}
    ns = sorted(args.n)
    n0 = ns[-1]
    e0, v0, p0, h0, nn0 = (by[stage, n0] for stage in STAGES)
    st = e0["settings"]
    dim = e0["dim"]
    gpu = "no GPU" not in where
    disk_ns = [n for n in ns if by["heads", n]["disk_seconds"] is not None]
    device_words = "this GPU" if args.device.startswith("cuda") else "this CPU"
    cmd = "python benchmarks/run_scaling.py" + ("" if args.device == "cpu" else
                                                f" --device {args.device}")
    cmd += f" --n {' '.join(str(n) for n in ns)}"
    L = [
        "# Scaling: cost per image and a plan for 1M and 10M images",
        "",
        f"Generated by `{cmd}` on {date} in {wall / 60:.1f} min; {where}; "
        f"device `{args.device}`. Every number on this page comes from that run: the "
        "**measured** section holds timings and memory of the run itself, the "
        "**extrapolated** sections are computed from them by the formulas given there.",
        "",
    ]
    if not gpu:
        L += [
            "**No GPU was available to this run.** GPU hours are not estimated here (no "
            "CPU-to-GPU ratio was measured on this code); run the same script with "
            "`--device cuda` on the GPU machine to get the same tables for it "
            "(`--doc` writes them to another page).",
            "",
        ]
    L += [
        f"The machine was shared with other jobs during the run (load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end, on "
        f"{e0['threads']} torch threads), so the timings are noisy and read best as upper "
        "bounds; (v), (b) and (c) in memory are the best of "
        f"{args.repeats} timed calls, the others one call.",
        "",
        "## Measured",
        "",
        f"Data: the first N MNIST images (28 px gray, held as uint8 RGB by the estimator: "
        f"{e0['image_bytes']:,.0f} bytes per image). Backbone: `{e0['model']}` at "
        f"{e0['input_px']} px (what `backbone=\"auto\"` picks for 28 px images; D = {dim}), "
        "random weights (no stage's cost depends on them). Default `SpiceClustering(10)` "
        f"settings: embedding batch {st['embed_batch_size']}, SimCLR batch "
        f"{st['pretrain_batch_size']}, {st['n_heads']} heads, M = {st['batch_size']}, "
        f"m2 = {st['minibatch_size']}, {st['n_weak_views']} weak + {st['n_strong_views']} "
        f"strong cached views (the \"auto\" numbers at these N), {nn0['n_neighbors']} "
        "neighbours (the \"auto\" number from N = 6,000 on). Each stage ran "
        "in a fresh process after one untimed warm-up call on a small part of the data:",
        "",
        "- **(a) embedding**: `embed_images` of the N originals (one view, uint8 in, "
        "normalised float32 out);",
        f"- **(v) view cache**: `embed_views` of the {v0['n_views']} default views "
        f"(original, weak, strong; per-image torchvision augmentations included) of the "
        f"first {v0['items']:,} images (per image = all {v0['n_views']} views);",
        f"- **(b) pretraining**: {p0['steps']} SimCLR steps of batch {p0['batch']} "
        "(`pretrain_simclr`, one epoch over a random subset of "
        f"{p0['items']:,} of the N images); per image-epoch = seconds / "
        f"{p0['items']:,}. A full epoch over N images is *extrapolated* as "
        "N × this (steps cost the same whatever N);",
        "- **(c) SPICE-Self heads**: one epoch of `train_heads` (max_epochs=1) over a view "
        "cache of the default shape and dtype for N (the embeddings of (a) and "
        "feature-space weak/strong views of them, as `backbone=\"precomputed\"` builds; "
        "the cost depends only on the shapes), in memory; *from file*: the same epoch "
        "reading a float16 `cache_dir`-style `.npy` (just written, so in the OS page "
        f"cache; one call, at N = {', '.join(f'{n:,}' for n in disk_ns) or 'none'}); "
        "*selection*: the label-free head selection pass (M = N);",
        f"- **(d) neighbour search**: `nearest_neighbors(features, {nn0['n_neighbors']})` "
        "on the N embeddings of (a) (blocks of 64 MiB of the similarity matrix);",
        "- **(e) memory**: the view-cache size `cache_nbytes(N, views, D, dtype)` in the "
        "dtype `cache_dtype=\"auto\"` picks (float32 up to 1 GiB, else float16), the "
        "process's peak resident set (`ru_maxrss`: data, model, everything) and the "
        "peak *extra* resident set of the timed calls (the kernel's high-water mark, "
        "reset just before them, minus the resident set then).",
        "",
    ]
    for n in ns:
        e, v, p, h, nn = (by[st_, n] for st_ in STAGES)
        L += [
            f"### N = {n:,}",
            "",
            "| stage | timed work | seconds | ms per image | images/s | peak RSS | "
            "peak extra during the call |",
            "|---|---|---|---|---|---|---|",
        ]

        def row(name, work, r, seconds=None, per=None):
            seconds = r["seconds"] if seconds is None else seconds
            per = r["per_item"] if per is None else per
            return (f"| {name} | {work} | {seconds:.1f} | {1e3 * per:.3f} | {1 / per:,.0f} | "
                    f"{r['peak_rss_mib']:,.0f} MiB | {r['peak_extra_mib']:,.0f} MiB |")
        L.append(row("(a) embedding", f"{n:,} originals", e))
        L.append(row("(v) view cache", f"{v['items']:,} images × {v['n_views']} views", v))
        L.append(row("(b) pretraining", f"{p['steps']} steps × {p['batch']} images", p))
        L.append(f"| (b) one pretraining epoch | extrapolated: N × the line above | "
                 f"*{p['per_item'] * n:.0f}* |  |  |  |  |")
        L.append(row("(c) heads, memory", f"1 epoch, {n:,} samples", h))
        if h["disk_seconds"] is not None:
            L.append(f"| (c) heads, from file | 1 epoch, float16 file | "
                     f"{h['disk_seconds']:.1f} | {1e3 * h['disk_seconds'] / n:.3f} | "
                     f"{n / h['disk_seconds']:,.0f} |  |  |")
        L.append(f"| (c) head selection | M = N, {st['n_heads']} heads | "
                 f"{h['select_seconds']:.1f} | {1e3 * h['select_seconds'] / n:.3f} | "
                 f"{n / h['select_seconds']:,.0f} |  |  |")
        L.append(row("(d) neighbour search", f"{n:,} × {n:,}, top {nn['n_neighbors']}", nn))
        L += [
            "",
            f"(e) view cache: {h['n_views']} views × {n:,} × {dim} in {h['dtype']} = "
            f"{_fmt_bytes(h['cache_bytes'])} ({_fmt_bytes(h['cache_bytes_f16'])} in float16).",
            "",
        ]

    # ------------------------------------------------------------- growth
    def series(stage, key="seconds"):
        return [by[stage, n][key] for n in ns]
    same = [  # the same work at every N: any change is noise
        (f"(v) view cache, {v0['items']:,} images (same work at every N)", series("views"), 0),
        (f"(b) pretraining, {p0['steps']} steps (same work at every N)", series("pretrain"), 0),
    ]
    growth = [
        ("(a) embedding", series("embed"), 1),
        *same,
        ("(c) heads, one epoch in memory", series("heads"), 1),
        ("(c) head selection", series("heads", "select_seconds"), 1),
        ("(d) neighbour search", series("neighbors"), 2),
    ]
    if all(by["heads", n]["disk_seconds"] is not None for n in ns):
        growth.insert(4, ("(c) heads, one epoch from file", series("heads", "disk_seconds"), 1))
    ratio = ns[-1] / ns[0]
    noise = max(max(ys) / min(ys) for _, ys, _ in same)
    # growth further from the expected ratio**b than the same-work rows vary
    off = [f"{name.split(',')[0]} ({ys[-1] / ys[0]:.1f}x, expected {ratio**expect:.0f}x)"
           for name, ys, expect in growth if (name, ys, expect) not in same
           and not 1 / noise <= ys[-1] / ys[0] / ratio**expect <= noise]
    L += [
        "## How time and memory grow with N (measured)",
        "",
        f"Exponent b of a least-squares fit of log(value) on log(N) over N = "
        f"{', '.join(f'{n:,}' for n in ns)} (b = 1: linear, b = 2: quadratic); N grows "
        f"{ratio:.0f}x from the first to the last column, so a linear stage should grow "
        f"{ratio:.0f}x and a quadratic one {ratio**2:.0f}x.",
        "",
        "| seconds of | " + " | ".join(f"N = {n:,}" for n in ns)
        + " | growth | exponent b | expected |",
        "|---|" + "---|" * (len(ns) + 3),
    ]
    for name, ys, expect in growth:
        L.append(f"| {name} | " + " | ".join(f"{y:.1f}" for y in ys)
                 + f" | {ys[-1] / ys[0]:.1f}x | {_exponent(ns, ys):.2f} | {expect} |")
    L += [
        "",
        "| peak extra memory (MiB) of | " + " | ".join(f"N = {n:,}" for n in ns)
        + " | growth | exponent b | fitted bytes per image |",
        "|---|" + "---|" * (len(ns) + 3),
    ]
    for stage, name in (("embed", "(a) embedding (output N × D float32)"),
                        ("heads", "(c) heads (training on the cache)"),
                        ("neighbors", "(d) neighbour search (N × n_s indices + one block)")):
        ys = series(stage, "peak_extra_mib")
        L.append(f"| {name} | " + " | ".join(f"{y:,.0f}" for y in ys)
                 + f" | {ys[-1] / max(ys[0], 1e-9):.1f}x | "
                 + (f"{_exponent(ns, ys):.2f} |" if min(ys) > 0 else "– |")
                 + f" {_linear(ns, ys)[1] * 2**20:,.0f} |")
    L += [
        "",
        "| peak RSS of the process (MiB), stage | " + " | ".join(f"N = {n:,}" for n in ns)
        + " | fitted MiB at N = 0 | fitted bytes per image |",
        "|---|" + "---|" * (len(ns) + 2),
    ]
    for stage in STAGES:
        ys = series(stage, "peak_rss_mib")
        a, b = _linear(ns, ys)
        L.append(f"| {stage} | " + " | ".join(f"{y:,.0f}" for y in ys)
                 + f" | {a:,.0f} | {b * 2**20:,.0f} |")
    nn_exp = _exponent(ns, series("neighbors"))
    L += [
        "",
        "Expected: (a) and (c) do the same work per image whatever N (linear in N); (v) and "
        "(b) time the same work at every N (exponent 0), so their spread, up to "
        f"{noise:.1f}x between processes in this run, is the timing noise of the shared "
        "machine. Stages whose growth from the first to the last N differs from the "
        "expected by more than that factor: " + ("; ".join(off) if off else "none") + "."
        + (" This run does not explain those beyond its noise; the plan below extrapolates "
           "from the largest N, the conservative choice for a stage measured to grow faster "
           "than expected." if off else "")
        + " The neighbour search multiplies every "
        "embedding with every other "
        f"one: its compute is quadratic (measured exponent {nn_exp:.2f}), its memory linear "
        "(the N × n_s neighbour indices, a normalised float32 copy of the N × D "
        "embeddings and one 64 MiB block of the similarity matrix; the dense N × N matrix, "
        f"{_fmt_bytes(4 * n0**2)} in float32 at N = {n0:,}, is never built).",
        "",
    ]

    # ------------------------------------------------------------- plan
    targets, crossover = plan(rows, n0)
    others = [plan(rows, n)[0] for n in ns]  # the same extrapolation from every measured N

    def spread(i, key):
        values = [o[i]["seconds"][key] for o in others]
        return f"{_fmt_hours(min(values))}–{_fmt_hours(max(values))}"
    L += [
        "## Plan for 1M and 10M images (extrapolated)",
        "",
        f"From the measurements at N = {n0:,} on {device_words} "
        f"({e0['threads']} torch threads), for a default fit "
        f"(`pretrain_epochs={st['pretrain_epochs']}`, {v0['n_views']} cached views, "
        f"`max_epochs={st['max_epochs']}` head epochs, `semi=\"head\"`, whose neighbour "
        "search runs once per fit) of 28 px images with the same backbone. Formulas "
        "(s = seconds per image measured above, t = seconds measured at "
        f"N0 = {n0:,}):",
        "",
        f"- pretraining = s(b) × N × {st['pretrain_epochs']} epochs;",
        "- view cache = s(v) × N (all views of each image, once per fit);",
        f"- heads = s(c) × N × {st['max_epochs']} epochs + t(selection) × N / N0;",
        "- neighbour search = t(d) × (N / N0)²;",
        "- embedding for `predict`/`transform` = s(a) × N (not part of `fit`).",
        "",
        f"SPICE-Semi's training (`semi_steps={st['semi_steps']}` steps per round, "
        f"{st['semi_rounds']} rounds) has a fixed number of steps whatever N, so it is not "
        "in the table. In brackets: the share of the fit, and the range of the same "
        f"extrapolation from each measured N ({', '.join(f'{n:,}' for n in ns)}), a "
        "measure of the timing noise. Hours are wall-clock hours of the whole machine "
        f"({e0['threads']} threads), i.e. machine-hours; more cores or machines divide "
        "them only where the work is split (torchrun splits pretraining, embedding and "
        "SPICE-Semi fine-tuning; the neighbour search and the head training are not split: "
        "every process runs them whole).",
        "",
        "| stage | " + " | ".join(f"N = {t['n']:,}" for t in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    names = [("pretrain", f"(b) pretraining, {st['pretrain_epochs']} epochs"),
             ("views", f"(v) view cache, {v0['n_views']} views"),
             ("heads", f"(c) SPICE-Self heads, {st['max_epochs']} epochs + selection"),
             ("neighbors", f"(d) neighbour search, top {nn0['n_neighbors']}")]
    for key, name in names:
        L.append(f"| {name} | " + " | ".join(
            f"{_fmt_hours(t['seconds'][key])} ({100 * t['seconds'][key] / t['fit_seconds']:.0f}"
            f" %; {spread(i, key)})" for i, t in enumerate(targets)) + " |")
    L.append("| **fit (sum)** | " + " | ".join(f"**{_fmt_hours(t['fit_seconds'])}**"
                                              for t in targets) + " |")
    if "heads_disk" in targets[0]["seconds"]:
        L.append(f"| (c) heads with the cache read from file (`cache_dir`), instead (from "
                 f"the from-file epoch at N = {max(disk_ns):,}) | "
                 + " | ".join(_fmt_hours(t["seconds"]["heads_disk"]) for t in targets) + " |")
    L.append("| (a) embedding for `predict` (one view) | " + " | ".join(
        _fmt_hours(t["seconds"]["embed"]) for t in targets) + " |")
    nn_slope = _linear(ns, series("neighbors", "peak_extra_mib"))[1] * 2**20
    base = max(_linear(ns, series(stage, "peak_rss_mib"))[0] for stage in STAGES)

    def ram(t):
        return (t["bytes"]["images"] + t["bytes"]["embeddings"] + nn_slope * t["n"]
                + base * 2**20)
    dominant = [max(("pretrain", "views", "heads", "neighbors"), key=lambda k: t["seconds"][k])
                for t in targets]
    L += [
        "",
        "Memory and disk (bytes per image from the run: images "
        f"{e0['image_bytes']:,.0f} B as uint8 RGB, view cache "
        f"{h0['cache_bytes_f16'] / n0:,.0f} B in float16, embeddings {4 * dim:,} B in "
        f"float32, neighbour indices {8 * nn0['n_neighbors']:,} B in int64):",
        "",
        "| what | " + " | ".join(f"N = {t['n']:,}" for t in targets) + " | where |",
        "|---|" + "---|" * (len(targets) + 1),
        "| images (held by `fit` as one uint8 tensor; an `ImageStream` holds a few "
        "batches instead) | " + " | ".join(
            _fmt_bytes(t["bytes"]["images"]) for t in targets)
        + " | RAM, or files read per batch |",
        f"| view cache, {v0['n_views']} views, float16 | " + " | ".join(
            _fmt_bytes(t["bytes"]["cache_f16"]) for t in targets)
        + " | RAM, or disk with `cache_dir` (read per minibatch) |",
        "| embeddings (whole-data steps, neighbour search) | " + " | ".join(
            _fmt_bytes(t["bytes"]["embeddings"]) for t in targets) + " | RAM (or GPU) |",
        f"| neighbour indices, top {nn0['n_neighbors']} | " + " | ".join(
            _fmt_bytes(t["bytes"]["neighbors"]) for t in targets) + " | RAM |",
        f"| peak extra of the neighbour search (measured growth, {nn_slope:,.0f} B per "
        "image: the indices, a normalised copy of the embeddings, one block) | " + " | ".join(
            _fmt_bytes(nn_slope * t["n"]) for t in targets) + " | RAM, while it runs |",
        "| **RAM of a fit with the view cache on disk**: images + embeddings + peak extra "
        f"of the neighbour search + the process base ({base:,.0f} MiB, the largest fitted "
        "peak RSS at N = 0) | " + " | ".join(f"**{_fmt_bytes(ram(t))}**" for t in targets)
        + " | RAM |",
        "| disk for `cache_dir` (the view cache) | " + " | ".join(
            _fmt_bytes(t["bytes"]["cache_f16"]) for t in targets) + " | local disk |",
    ]
    rows_per_block = [max(1, (64 << 20) // (4 * t["n"])) for t in targets]
    L += [
        "",
        "What dominates: "
        + "; ".join(f"at N = {t['n']:,}, {dict(names)[d].split(',')[0][4:]} "
                    f"({100 * t['seconds'][d] / t['fit_seconds']:.0f} % of the fit)"
                    for t, d in zip(targets, dominant))
        + f". The neighbour search grows 100x per 10x in N, the other stages 10x; on "
        f"{device_words} it overtakes {st['pretrain_epochs']}-epoch pretraining at about "
        f"N = {crossover / 1e6:,.1f}M images (where t(d) × (N / N0)² = "
        f"s(b) × N × {st['pretrain_epochs']}); with fewer pretraining epochs it overtakes "
        "earlier, in proportion. The N² line assumes the cost per pair of N0 holds; the "
        "block size below makes it worse than that at 10M.",
        "",
        "Recommendations, from these numbers:",
        "",
        "- **Pretraining** is linear and splits over GPUs with torchrun (the library's "
        "data-parallel SimCLR); its hours scale with `pretrain_epochs` (or cap them with "
        "`pretrain_time`). Its GPU hours are to be measured with "
        "`python benchmarks/run_scaling.py --device cuda`; the GPUs needed for a "
        "wall-clock target T are then (GPU hours of the table) / T.",
        "- **View cache**: set `cache_dir` on a local disk for N in the millions "
        "(float16 is chosen automatically above 1 GiB); heads then read it per minibatch "
        "(see the *from file* rows for the cost of reading, here from the page cache).",
        "- **Neighbour search** is the only super-linear stage. At "
        + ", ".join(f"N = {t['n']:,} a 64 MiB block holds {r:,} row(s)"
                    for t, r in zip(targets, rows_per_block))
        + " of the similarity matrix, so the blocked search degenerates to "
        "matrix-vector products: give it larger blocks (`block_bytes`) on a GPU, or "
        "replace it by an approximate index (faiss IVF/HNSW, on GPU) for 10M images; "
        "the neighbour indices themselves stay linear in N. (These timings are the torch "
        "search, `backend=\"torch\"`; with faiss installed the library searches with exact `faiss.knn`, "
        "faster by a constant factor (see the neighbour section of benchmarks.md) but "
        "quadratic too.)",
        "- **Memory**: at 10M images the images alone need "
        f"{_fmt_bytes(targets[-1]['bytes']['images'])} of RAM when passed as an array "
        "(one uint8 tensor); pass an `ImageStream` (or a torch Dataset) to read them "
        "through a DataLoader instead, which removes that term from the RAM below. With "
        "the images in memory, the embeddings and the neighbour search, plan a machine "
        "with at least "
        f"{_fmt_bytes(ram(targets[-1]))} of RAM and "
        f"{_fmt_bytes(targets[-1]['bytes']['cache_f16'])} of local disk for the view cache "
        f"(at 1M: {_fmt_bytes(ram(targets[0]))} of RAM, plus "
        f"{_fmt_bytes(targets[0]['bytes']['cache_f16'])} if the view cache stays in memory).",
        "",
    ]
    return "\n".join(L)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 30_000, 70_000],
                        help="numbers of MNIST images (at most 70,000)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--view-n", type=int, default=1024,
                        help="images whose default views are embedded in (v)")
    parser.add_argument("--pretrain-steps", type=int, default=10)
    parser.add_argument("--n-neighbors", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed calls of (v), (b) and (c); the fewest seconds count")
    parser.add_argument("--disk-heads", choices=["smallest", "all", "none"], default="smallest",
                        help="at which N to time a head epoch read from a float16 file")
    parser.add_argument("--smallest", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--doc", type=Path, default=DOC, help="page to write")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--render-only", action="store_true",
                        help=f"rewrite the page from the last {RESULTS.name}; measure nothing")
    parser.add_argument("--worker", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.n[0], args.device, args)
    if args.render_only:
        saved = json.loads(RESULTS.read_text())
        for key in ("n", "device", "repeats"):
            setattr(args, key, saved[key])
        return _write(args, saved["rows"], saved["wall_s"], saved["date"], saved["load"],
                      saved["machine"])
    args.n = sorted(args.n)
    print(f"{machine()}; device {args.device}. The machine may be shared with other "
          "jobs: timings are noisy.", flush=True)
    start, rows, load = time.perf_counter(), [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="spice_scaling_") as workdir:
        args.workdir = workdir
        for n in args.n:
            for stage in STAGES:
                rows.append(run_stage(stage, n, args))
                r = rows[-1]
                print(f"N={n:>7,} {stage:<9} {r['seconds']:8.1f} s  "
                      f"{1e3 * r['per_item']:8.3f} ms/img  peak RSS {r['peak_rss_mib']:6.0f} MiB"
                      f"  (process {r['process_seconds']:.0f} s, total "
                      f"{(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    wall = time.perf_counter() - start
    load.append(os.getloadavg()[0])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    RESULTS.write_text(json.dumps({"n": args.n, "device": args.device, "repeats": args.repeats,
                                   "machine": machine(), "date": date, "wall_s": wall,
                                   "load": load, "rows": rows}, indent=1))
    _write(args, rows, wall, date, load, machine())


def _write(args, rows, wall, date, load, where):
    text = render(rows, args, wall, date, load, where)
    print(text)
    if not args.no_doc:
        args.doc.write_text(text)
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
