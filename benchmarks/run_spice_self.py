"""SPICE-Self against KMeans on the same features, and where ``fit`` spends its time.

Three measurements, written to the ``spice_self`` section of docs/benchmarks.md:

1. CIFAR-10 test set (10,000 JPEG-decoded images): 64-d features of the ResNet-20
   in shared/data/weights. That network was trained *with CIFAR-10 labels*, so
   these features are supervised: this only tests the clustering stage, it is not
   label-free clustering of CIFAR-10.
2. scikit-learn digits (1,797 images): the 64 raw pixel values as features.
   Both 1 and 2 use ``backbone="precomputed"`` with default settings, over several
   seeds, against ``KMeans(n_init=10)`` on exactly the same features.
3. A timm ``resnet18`` (random weights, CIFAR stem) at 32 px on the CIFAR-10 test
   images with default settings: whole ``fit`` time / time of the one pass that
   embeds all cached views, with a breakdown of the rest.

Usage::

    python benchmarks/run_spice_self.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/run_spice_self.py --quick    # smaller timing run, no doc update
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_resnet import load_cifar_resnet  # noqa: E402
from datasets import checked_path, cifar10_test  # noqa: E402
from report import machine, write_section  # noqa: E402

import spice_learn.spice_self as spice_self_module  # noqa: E402
import spice_learn.view_cache as view_cache_module  # noqa: E402
from spice_learn import SpiceClustering  # noqa: E402
from spice_learn.embedding import embed_images  # noqa: E402
from spice_learn.metrics import clustering_scores  # noqa: E402
from spice_learn.validation import resolve_device  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resnet20_features(x, data_dir):
    model = load_cifar_resnet(checked_path("weights/resnet20-12fca82f.th", data_dir), 3)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for s in range(0, len(x), 500):
            b = torch.from_numpy(x[s : s + 500]).permute(0, 3, 1, 2).float() / 255
            out.append(model((b - mean) / std))
    return torch.cat(out).numpy()


def compare(features, y, seeds):
    rows = {"SCAN heads (default head_objective)": [], "SPICE-Self": [], "KMeans": []}
    for seed in seeds:
        for name, objective in (("SCAN heads (default head_objective)", "scan"),
                                ("SPICE-Self", "spice")):
            t = time.perf_counter()
            labels = SpiceClustering(10, backbone="precomputed", semi=None, n_weak_views=2,
                                     n_strong_views=4, head_objective=objective,
                                     random_state=seed).fit_predict(features)
            rows[name].append((clustering_scores(y, labels), time.perf_counter() - t))
        t = time.perf_counter()
        labels = KMeans(10, n_init=10, random_state=seed).fit_predict(features)
        rows["KMeans"].append((clustering_scores(y, labels), time.perf_counter() - t))
        print(f"  seed {seed}: " + ", ".join(
            f"{k} acc {v[-1][0]['acc']:.3f}" for k, v in rows.items()), flush=True)
    return rows


def _stat(values):
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def comparison_table(title, rows):
    lines = [f"**{title}**", "", "| method | ACC | NMI | ARI | seconds |", "|---|---|---|---|---|"]
    for name, runs in rows.items():
        cols = [_stat([r[0][m] for r in runs]) for m in ("acc", "nmi", "ari")]
        lines.append(f"| {name} | {' | '.join(cols)} | {np.mean([r[1] for r in runs]):.1f} |")
    return "\n".join(lines)


def timed(name, fn, log):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            log[name] = log.get(name, 0.0) + time.perf_counter() - t
    return wrapper


def fit_time_ratio(x, y):
    """Fit a default resnet18 model and time its parts by wrapping the stages' calls."""
    log = {}
    stages = {"as_images": view_cache_module, "embed_views": view_cache_module,
              "train_epochs": spice_self_module, "head_selection_losses": spice_self_module}
    originals = {n: getattr(module, n) for n, module in stages.items()}
    for n, fn in originals.items():
        setattr(stages[n], n, timed(n, fn, log))
    try:
        model = SpiceClustering(10, backbone="resnet18", pretrain=None, semi=None,
                                head_objective="spice", n_weak_views=2, n_strong_views=4,
                                random_state=0)
        t = time.perf_counter()
        model.fit(x)
        total = time.perf_counter() - t
    finally:
        for n, fn in originals.items():
            setattr(stages[n], n, fn)
    n_views = 1 + model.n_weak_views + model.n_strong_views
    # Bare forward throughput of the same backbone on the same batches (no augmentation).
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    t = time.perf_counter()
    embed_images(model.backbone_, images, batch_size=model.embed_batch_size,
                            device=resolve_device(model.device))  # same as fit
    bare = time.perf_counter() - t
    scores = clustering_scores(y, model.labels_)
    return {"total": total, "log": log, "n_views": n_views, "n": len(x), "bare_one_view": bare,
            "epochs": len(model.loss_history_), "acc": scores["acc"]}


def timing_table(r):
    embed, total = r["log"]["embed_views"], r["total"]
    other = total - sum(r["log"].values())
    lines = [
        f"**Fit time / embedding time**: timm `resnet18` (random weights, CIFAR stem) at 32 px, "
        f"{r['n']:,} CIFAR-10 test images, default SPICE-Self settings, `pretrain=None` ({r['n_views']} cached views: "
        f"original + 2 weak + 4 strong, {r['epochs']} head epochs, 10 heads).",
        "",
        "| part of `fit` | seconds | share |",
        "|---|---|---|",
    ]
    names = {"as_images": "input coercion",
             "embed_views": "embedding all cached views once (incl. augmentation)",
             "train_epochs": "SPICE-Self head training",
             "head_selection_losses": "label-free head selection (M = N)"}
    for key, label in names.items():
        lines.append(f"| {label} | {r['log'].get(key, 0):.1f} | {r['log'].get(key, 0) / total:.1%} |")
    lines += [
        f"| rest (prototypes, labels) | {other:.1f} | {other / total:.1%} |",
        f"| **whole fit** | **{total:.1f}** | 100% |",
        "",
        f"Ratio whole `fit` / embedding pass: **{total / embed:.2f}** (goal ≤ 1.3). "
        f"Bare forward of the original view alone: {r['bare_one_view']:.1f} s "
        f"({r['n'] / r['bare_one_view']:.0f} img/s); the cached pass runs "
        f"{r['n'] * r['n_views'] / embed:.0f} img/s over all views including augmentation. "
        f"(ACC {r['acc']:.3f} with these *random* features is not meaningful: stage 1 "
        "pretraining is what makes them useful.)",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="shared data folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-timing", action="store_true",
                        help="skip the resnet18 fit-time breakdown (minutes on a CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="time on 1,000 images, one seed, do not write the docs")
    args = parser.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    print(f"machine: {machine()}", flush=True)
    x, y = cifar10_test(args.data_dir)
    print("CIFAR-10 test, ResNet-20 (supervised) features:", flush=True)
    cifar_rows = compare(resnet20_features(x, args.data_dir), y, seeds)
    print("digits, pixel features:", flush=True)
    digits = load_digits()
    digit_rows = compare(digits.data.astype(np.float32), digits.target, seeds)
    n_time = 1000 if args.quick else len(x)
    if not args.no_timing:
        print(f"timing fit of resnet18 on {n_time} CIFAR-10 test images ...", flush=True)
    timing = None if args.no_timing else fit_time_ratio(x[:n_time], y[:n_time])
    sections = [
        "## SPICE-Self (stage 2) on fixed features",
        "",
        f"Written by `python benchmarks/run_spice_self.py` on {time.strftime('%Y-%m-%d')}; "
        f"{machine()}. Mean ± std over seeds {seeds}; default parameters; "
        "`KMeans(n_init=10)` on exactly the same features.",
        "",
        comparison_table("CIFAR-10 test (10,000 images), ResNet-20 features — supervised "
                         "features (trained with CIFAR-10 labels), for testing the clustering "
                         "stage only", cifar_rows),
        "",
        comparison_table("scikit-learn digits (1,797 images), raw pixels as features", digit_rows),
        "",
        timing_table(timing) if timing is not None else
        "(The fit-time breakdown was skipped in this run: `--no-timing`.)",
    ]
    text = "\n".join(sections)
    print("\n" + text)
    if not args.quick:
        print(f"\nwrote {write_section('spice_self', text)}")


if __name__ == "__main__":
    main()
