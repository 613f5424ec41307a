"""Command line: ``spice-learn demo``."""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _demo(args):
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    from . import SpiceClustering, __version__
    from .metrics import clustering_scores

    digits = load_digits()
    X = digits.data.astype(np.float32)  # (1797, 64) pixel features of the 8x8 images
    y = digits.target  # used only to score
    print(f"spice-learn {__version__} demo: scikit-learn digits, {X.shape[0]} images of 8x8 px, "
          f"{len(np.unique(y))} classes (labels used only for scoring)")
    print("Both methods cluster the same pixel features (backbone='precomputed').\n")
    rows = []
    start = time.perf_counter()
    spice = SpiceClustering(
        n_clusters=10, backbone="precomputed", max_epochs=args.max_epochs,
        random_state=args.seed, verbose=args.verbose,
    )
    labels = spice.fit_predict(X)
    rows.append(("SPICE-Self", clustering_scores(y, labels), time.perf_counter() - start))
    start = time.perf_counter()
    labels = KMeans(n_clusters=10, n_init=10, random_state=args.seed).fit_predict(X)
    rows.append(("KMeans", clustering_scores(y, labels), time.perf_counter() - start))
    print(f"{'method':<12}{'ACC':>8}{'NMI':>8}{'ARI':>8}{'seconds':>10}")
    for name, scores, seconds in rows:
        print(f"{name:<12}{scores['acc']:>8.3f}{scores['nmi']:>8.3f}{scores['ari']:>8.3f}"
              f"{seconds:>10.1f}")
    print(f"\nSPICE-Self picked head {spice.best_head_} of {spice.n_heads} by its label-free "
          f"DS-CE loss {spice.head_losses_[spice.best_head_]:.4f}.")
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
        description="Cluster scikit-learn's 1,797 bundled 8x8 digits with SPICE-Self and "
        "KMeans and print ACC, NMI, ARI and wall time (labels are used only to score).",
    )
    demo.add_argument("--seed", type=int, default=0, help="random_state (default: 0)")
    demo.add_argument("--max-epochs", type=int, default=100,
                      help="SPICE-Self training epochs (default: 100)")
    demo.add_argument("--verbose", type=int, default=0, help="progress bars when > 0")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    """Entry point of the ``spice-learn`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
