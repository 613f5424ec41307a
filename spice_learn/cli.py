"""Command line: ``spice-learn demo`` and ``spice-learn cluster DIR``."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main"]


def _demo(args):
    import torch
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    from . import SpiceClustering, __version__
    from .embedding import embed_images
    from .image_input import as_images
    from .metrics import clustering_scores
    from .spice_self import SELECTION_LOSS_NAMES

    digits = load_digits()
    # The bundled images hold values 0-16; scale them to ordinary 8-bit images.
    X = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    y = digits.target  # used only to score
    model = SpiceClustering(n_clusters=10, random_state=args.seed,
                            verbose=_verbosity(args))
    print(f"spice-learn {__version__} demo: scikit-learn digits, {len(X)} grayscale images of "
          "8x8 px, 10 classes (labels used only for scoring).")
    print(f"Running {model!r} with its defaults: SimCLR pretraining of a small conv net "
          f"(epochs chosen for the data and the machine), then {model.n_heads} cluster heads "
          f"({model.head_objective!r} objective, label-free head selection), then SPICE-Semi "
          f"(mode and steps chosen for the data and the machine).",
          flush=True)
    rows = []
    start = time.perf_counter()
    labels = model.fit_predict(X)
    seconds = time.perf_counter() - start
    rows.append((f"selected head ({model.head_objective})",
                 clustering_scores(y, model.self_labels_), None))
    rows.append(("SpiceClustering (all stages)", clustering_scores(y, labels), seconds))
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as fit's "auto"
    embedding = embed_images(model.backbone_, as_images(X), batch_size=256,
                             device=device).numpy()
    km = KMeans(n_clusters=10, n_init=10, random_state=args.seed).fit_predict(embedding)
    rows.append(("KMeans on the SPICE embedding", clustering_scores(y, km),
                 time.perf_counter() - start))
    start = time.perf_counter()
    km = KMeans(n_clusters=10, n_init=10, random_state=args.seed).fit_predict(X.reshape(len(X), -1))
    rows.append(("KMeans on pixels", clustering_scores(y, km), time.perf_counter() - start))
    print(f"\n{'method':<32}{'ACC':>7}{'NMI':>7}{'ARI':>7}{'seconds':>9}")
    for name, scores, seconds in rows:
        time_text = "" if seconds is None else f"{seconds:>9.1f}"
        print(f"{name:<32}{scores['acc']:>7.3f}{scores['nmi']:>7.3f}{scores['ari']:>7.3f}"
              f"{time_text}")
    loss = SELECTION_LOSS_NAMES[model.head_objective]
    print(f"\nThe heads' label-free {loss} loss picked head {model.best_head_} of "
          f"{model.n_heads} ({model.head_losses_[model.best_head_]:.4f}); "
          f"{model.reliable_mask_.mean():.0%} of the images were reliable for SPICE-Semi "
          f"({model.plan_['semi']!r} mode, {model.plan_['semi_steps']} steps a round; "
          f"{model.semi_rounds_} of {model.plan_['semi_rounds']} rounds kept).")
    return 0


def _cluster(args):
    import csv
    import os
    import shutil
    from pathlib import Path

    from . import SpiceClustering
    from .cluster_count import check_n_clusters
    from .image_input import list_image_files, read_image_files

    root, out = Path(args.directory), Path(args.out)
    try:
        paths = list_image_files(root)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Never cluster our own output (an earlier run's copies, links and overview inside
    # DIR); absolute paths without resolving links, which point back into DIR.
    out_abs = Path(os.path.abspath(out))
    paths = [p for p in paths if out_abs not in Path(os.path.abspath(p)).parents]
    images, readable, failures = read_image_files(paths)
    for path, reason in failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    auto = args.n_clusters == "auto"
    needed = 4 if auto else max(2, args.n_clusters)
    if len(images) < needed:
        print(f"error: {len(images)} readable images under {root}, need at least "
              f"{needed} for {args.n_clusters} clusters.", file=sys.stderr)
        return 2
    into = (f"a number of clusters chosen from 2 to {check_n_clusters('auto', len(images))[-1]}"
            if auto else f"{args.n_clusters} clusters")
    print(f"clustering {len(images)} images from {root} into {into} "
          f"({len(failures)} unreadable files skipped) ...", flush=True)
    model = SpiceClustering(
        args.n_clusters, backbone=args.backbone, weights=args.weights,
        pretrain_epochs=args.pretrain_epochs,
        pretrain_time="auto" if args.pretrain_minutes is None else 60 * args.pretrain_minutes,
        semi=None if args.semi == "none" else args.semi, random_state=args.seed,
        verbose=_verbosity(args),
    )
    start = time.perf_counter()
    model.fit(images)
    confidence = model.predict_proba(images).max(axis=1)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "clusters.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "cluster", "confidence", "reliable"])
        reliable = (model.reliable_mask_ if model.reliable_mask_ is not None
                    else [""] * len(readable))
        for row in zip(readable, model.labels_, confidence, reliable, strict=True):
            writer.writerow([row[0], int(row[1]), f"{row[2]:.4f}", row[3] if row[3] == ""
                             else int(bool(row[3]))])
    if failures:
        with open(out / "skipped.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows(failures)
    written = [out / "clusters.csv"]
    try:
        from .plotting import plot_cluster_grid

        fig = plot_cluster_grid(images, model.labels_, confidence, n_clusters=model.n_clusters_,
                                title=f"{root.name}: most confident images per cluster")
        fig.savefig(out / "overview.png", dpi=100)
        written.append(out / "overview.png")
    except ImportError:
        print("matplotlib is not installed: no overview.png", file=sys.stderr)
    if args.copy or args.link:
        for stale in out.glob("cluster_*"):  # folders of an earlier run into the same OUT
            if stale.is_dir() and stale.name[len("cluster_"):].isdigit():
                shutil.rmtree(stale)
        for i, (path, label) in enumerate(zip(readable, model.labels_, strict=True)):
            folder = out / f"cluster_{int(label):02d}"
            folder.mkdir(exist_ok=True)
            target = folder / Path(path).name
            if target.exists() or target.is_symlink():  # same name in another subfolder
                target = folder / f"{Path(path).stem}_{i}{Path(path).suffix}"
            if args.link:
                os.symlink(os.path.abspath(path), target)
            else:
                shutil.copy2(path, target)
    sizes = np.bincount(model.labels_, minlength=model.n_clusters_)
    if auto:
        print(f"chose {model.n_clusters_} clusters (silhouette per candidate: "
              + ", ".join(f"{k}: {v:.3f}" for k, v in model.n_clusters_scores_.items()) + ")")
    print(f"done in {time.perf_counter() - start:.0f} s; cluster sizes: {sizes.tolist()}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _epochs(text):
    return text if text == "auto" else int(text)


def _n_clusters(text):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'auto', got {text!r}") from None


def _add_verbosity(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--verbose", type=int, default=None,
                       help="0: quiet; 1: the plan, progress bars with an ETA and a line per "
                       "stage (default: 1 on a terminal, 0 otherwise)")
    group.add_argument("--quiet", "-q", action="store_true",
                       help="no progress output (same as --verbose 0)")


def _verbosity(args):
    """``--verbose``, else 0 with ``--quiet``, else progress when stderr is a terminal."""
    if args.quiet:
        return 0
    if args.verbose is not None:
        return args.verbose
    return 1 if sys.stderr.isatty() else 0


def build_parser():
    """The ``spice-learn`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="spice-learn",
        description="Image clustering with SPICE (semantic pseudo-labelling) for scikit-learn.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="cluster scikit-learn's bundled digits offline and compare with KMeans",
        description="Cluster scikit-learn's 1,797 bundled 8x8 digits with SpiceClustering's "
        "default settings (self-supervised pretraining, cluster heads, SPICE-Semi) and compare with "
        "KMeans; prints ACC, NMI, ARI and wall time (labels are used only to score). Takes "
        "a few minutes on 2 CPU cores.",
    )
    demo.add_argument("--seed", type=int, default=0, help="random_state (default: 0)")
    _add_verbosity(demo)
    demo.set_defaults(func=_demo)

    cluster = sub.add_parser(
        "cluster",
        help="cluster every image file under a folder",
        description="Cluster every image under DIRECTORY (searched recursively; .png, .jpg, "
        ".bmp, .gif, .tif, .webp, .ppm, .pgm) with SpiceClustering and write OUT/clusters.csv "
        "(path, cluster, confidence = highest cluster probability, reliable = 1 when the "
        "image's neighbours agree with its cluster), OUT/overview.png (the most confident "
        "images of each cluster) and, with --copy or --link, one folder per cluster. "
        "Unreadable files are reported, listed in OUT/skipped.csv and skipped.",
    )
    cluster.add_argument("directory", help="folder of images")
    cluster.add_argument("--n-clusters", "-k", type=_n_clusters, required=True,
                         help="number of clusters, or 'auto' to choose 2-20 without labels "
                         "(highest silhouette of the candidates' clusterings)")
    cluster.add_argument("--out", "-o", default="spice_clusters",
                         help="output folder (default: spice_clusters)")
    group = cluster.add_mutually_exclusive_group()
    group.add_argument("--copy", action="store_true", help="copy images into OUT/cluster_NN/")
    group.add_argument("--link", action="store_true",
                       help="symlink images into OUT/cluster_NN/")
    cluster.add_argument("--backbone", default="auto",
                         help="timm model name, or 'auto' (default: a small conv net on the CPU; "
                         "on a GPU, resnet18 above 28 px)")
    cluster.add_argument("--weights", default=None,
                         help="'pretrained' (timm zoo, needs a network) or a state dict file; "
                         "default: pretrain on the images themselves")
    cluster.add_argument("--pretrain-epochs", type=_epochs, default="auto",
                         help="self-supervised pretraining epochs, or 'auto' (default: chosen "
                         "from the number of images and the device)")
    cluster.add_argument("--pretrain-minutes", type=float, default=None,
                         help="wall-clock budget for pretraining in minutes (default: on a CPU, "
                              "the epochs that fit a budget set by the number of images)")
    cluster.add_argument("--semi", choices=["auto", "head", "finetune", "none"], default="auto",
                         help="SPICE-Semi refinement (default: auto, chosen for the data "
                              "and the machine)")
    cluster.add_argument("--seed", type=int, default=0, help="random_state (default: 0)")
    _add_verbosity(cluster)
    cluster.set_defaults(func=_cluster)
    return parser


def main(argv=None):
    """Entry point of the ``spice-learn`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
