"""Figures that show what a clustering did (matplotlib, an optional dependency).

Every function returns a :class:`matplotlib.figure.Figure` with a title and
labelled axes; save it with ``fig.savefig(path)``.
"""

from __future__ import annotations

import numpy as np

from .image_input import as_images
from .metrics import cluster_accuracy

__all__ = [
    "plot_cluster_grid",
    "plot_confusion_matrix",
    "plot_embedding_map",
    "plot_head_losses",
    "plot_pretraining_loss",
    "prototypical_indices",
]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("spice_learn.plotting needs matplotlib: pip install matplotlib") from None
    return plt


def prototypical_indices(labels, confidence, n_per_cluster):
    """For each cluster (sorted), the indices of its most confident samples."""
    labels, confidence = np.asarray(labels), np.asarray(confidence)
    out = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        out[int(c)] = members[np.argsort(-confidence[members], kind="stable")[:n_per_cluster]]
    return out


def plot_cluster_grid(images, labels, confidence, *, n_per_cluster=8, n_clusters=None,
                      title=None):
    """A row per cluster with its ``n_per_cluster`` most confident images.

    Parameters
    ----------
    images : images accepted by :func:`spice_learn.image_input.as_images`
    labels : array-like of shape (n_samples,)
    confidence : array-like of shape (n_samples,)
        E.g. ``model.predict_proba(X).max(axis=1)``.
    n_per_cluster : int
    n_clusters : int, optional
        Show clusters ``0 .. n_clusters - 1``, empty ones included (marked
        "empty"); by default only the clusters present in ``labels``.
    title : str, optional
    """
    plt = _pyplot()
    images = as_images(images)
    rows = prototypical_indices(labels, confidence, n_per_cluster)
    shown = sorted({int(i) for idx in rows.values() for i in idx})
    pics = dict(zip(shown, images[shown].permute(0, 2, 3, 1).numpy()))  # only the shown ones
    if n_clusters is not None:
        rows = {c: rows.get(c, []) for c in range(n_clusters)}
    sizes = np.bincount(np.asarray(labels), minlength=n_clusters or 0)
    fig, axes = plt.subplots(len(rows), n_per_cluster, squeeze=False,
                             figsize=(1.1 * n_per_cluster + 1.2, 1.1 * len(rows) + 0.8))
    for r, (cluster, idx) in enumerate(rows.items()):
        for c in range(n_per_cluster):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(idx):
                ax.imshow(pics[idx[c]], interpolation="nearest")
        size = f"n={sizes[cluster]}" if sizes[cluster] else "empty"
        axes[r, 0].set_ylabel(f"cluster {cluster}\n({size})", rotation=0,
                              ha="right", va="center", fontsize=9)
    fig.suptitle(title or f"Most confident images of each cluster (top {n_per_cluster})")
    fig.tight_layout()
    return fig


def plot_confusion_matrix(y_true, labels, *, title=None):
    """Counts of true classes (rows) per cluster (columns), clusters reordered by
    the Hungarian matching that :func:`~spice_learn.metrics.cluster_accuracy` uses."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    plt = _pyplot()
    y_true, labels = np.asarray(y_true), np.asarray(labels)
    classes, clusters = np.unique(y_true), np.unique(labels)
    table = contingency_matrix(y_true, labels)  # (classes, clusters), sorted values
    rows, cols = linear_sum_assignment(-table)
    order = list(cols[np.argsort(rows)]) + [c for c in range(len(clusters)) if c not in cols]
    table = table[:, order]
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(clusters), 1 + 0.5 * len(classes)))
    im = ax.imshow(table, cmap="Blues")
    for (i, j), v in np.ndenumerate(table):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > table.max() / 2 else "black")
    ax.set_xticks(range(len(clusters)), [str(clusters[o]) for o in order])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("cluster (matched order)")
    ax.set_ylabel("true class")
    acc = cluster_accuracy(y_true, labels)
    ax.set_title(title or f"Confusion matrix after Hungarian matching (ACC {acc:.3f})")
    fig.colorbar(im, ax=ax, label="images")
    fig.tight_layout()
    return fig


def plot_embedding_map(embeddings, labels, *, reliable=None, method="pca", random_state=0,
                       title=None):
    """A 2-D map (PCA or t-SNE) of the embeddings coloured by cluster; reliable
    samples are drawn as filled dots, the others as small crosses."""
    plt = _pyplot()
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    if method == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(2, random_state=random_state).fit_transform(embeddings)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(2, random_state=random_state, init="pca").fit_transform(embeddings)
    else:
        raise ValueError(f"method must be 'pca' or 'tsne'; got {method!r}.")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab20" if len(np.unique(labels)) > 10 else "tab10")
    mask = np.ones(len(labels), bool) if reliable is None else np.asarray(reliable, bool)
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(*xy[sel & mask].T, s=8, color=cmap(c % cmap.N), label=f"cluster {c}")
        if reliable is not None:
            ax.scatter(*xy[sel & ~mask].T, s=10, marker="x", linewidths=0.6,
                       color=cmap(c % cmap.N), alpha=0.6)
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    extra = "" if reliable is None else " (dots: reliable, crosses: not reliable)"
    ax.set_title(title or f"Embedding map coloured by cluster{extra}", fontsize=10)
    ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def plot_head_losses(model, *, title=None):
    """Label-free DS-CE of every SPICE-Self head, the selected one marked."""
    plt = _pyplot()
    losses = np.asarray(model.head_losses_)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = ["tab:orange" if h == model.best_head_ else "tab:blue" for h in range(len(losses))]
    ax.bar(range(len(losses)), losses, color=colors)
    ax.set_xticks(range(len(losses)))
    ax.set_xlabel("head")
    ax.set_ylabel("DS-CE over the data set (lower is better)")
    low, high = losses.min(), losses.max()
    ax.set_ylim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
    ax.set_title(title or f"SPICE-Self head selection: head {model.best_head_} selected (orange)")
    fig.tight_layout()
    return fig


def plot_pretraining_loss(model, *, title=None):
    """NT-Xent loss per pretraining epoch (``model.pretrain_history_``)."""
    plt = _pyplot()
    history = np.asarray(model.pretrain_history_)
    if history.size == 0:
        raise ValueError("This model was not pretrained (pretrain_history_ is empty).")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(history) + 1), history, marker="o", markersize=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title(title or "Stage 1: SimCLR pretraining loss")
    fig.tight_layout()
    return fig
