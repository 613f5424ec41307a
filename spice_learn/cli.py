"""Command line: ``spice-learn demo``."""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _demo(args):
    import numpy as np
    import torch
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    from . import SpiceClustering, __version__
    from .embedding import embed_images
    from .image_input import as_images
    from .metrics import clustering_scores

    digits = load_digits()
    # The bundled images hold values 0-16; scale them to ordinary 8-bit images.
    X = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    y = digits.target  # used only to score
    model = SpiceClustering(n_clusters=10, random_state=args.seed, verbose=args.verbose)
    print(f"spice-learn {__version__} demo: scikit-learn digits, {len(X)} grayscale images of "
          "8x8 px, 10 classes (labels used only for scoring).")
    print(f"Running {model!r} with its defaults: SimCLR pretraining of a small conv net "
          f"({model.pretrain_epochs} epochs), then SPICE-Self ({model.n_heads} heads, "
          f"{model.max_epochs} epochs, label-free head selection), then SPICE-Semi "
          f"({model.semi!r} mode, {model.semi_steps} steps).", flush=True)
    rows = []
    start = time.perf_counter()
    labels = model.fit_predict(X)
    seconds = time.perf_counter() - start
    rows.append(("SPICE-Self (selected head)", clustering_scores(y, model.self_labels_), None))
    rows.append(("SPICE (stage 1, Self, Semi)", clustering_scores(y, labels), seconds))
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
    print(f"\nSPICE-Self picked head {model.best_head_} of {model.n_heads} by its label-free "
          f"DS-CE loss {model.head_losses_[model.best_head_]:.4f}; "
          f"{model.reliable_mask_.mean():.0%} of the images were reliable for SPICE-Semi.")
    return 0


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
        "default settings (self-supervised pretraining, then SPICE-Self) and compare with "
        "KMeans; prints ACC, NMI, ARI and wall time (labels are used only to score). Takes "
        "a few minutes on 2 CPU cores.",
    )
    demo.add_argument("--seed", type=int, default=0, help="random_state (default: 0)")
    demo.add_argument("--verbose", type=int, default=0, help="progress bars when > 0")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    """Entry point of the ``spice-learn`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
