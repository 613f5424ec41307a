"""Tests of spice_learn.plotting: every figure has a title, axis labels and content."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from spice_learn import SpiceClustering  # noqa: E402
from spice_learn.plotting import (  # noqa: E402
    plot_cluster_grid,
    plot_confusion_matrix,
    plot_embedding_map,
    plot_head_losses,
    plot_pretraining_loss,
    prototypical_indices,
)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _titled(fig):
    return fig._suptitle is not None or any(ax.get_title() for ax in fig.axes)


def test_prototypical_indices_orders_by_confidence():
    labels = np.array([0, 1, 0, 1, 0])
    conf = np.array([0.1, 0.9, 0.8, 0.2, 0.5])
    out = prototypical_indices(labels, conf, 2)
    assert out[0].tolist() == [2, 4] and out[1].tolist() == [1, 3]


def test_cluster_grid_has_one_row_per_cluster():
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    labels = np.arange(12) % 3
    fig = plot_cluster_grid(images, labels, np.linspace(0, 1, 12), n_per_cluster=4)
    assert _titled(fig) and len(fig.axes) == 12
    assert "cluster 0" in fig.axes[0].get_ylabel()
    assert sum(len(ax.images) for ax in fig.axes) == 12


def test_cluster_grid_can_show_empty_clusters():
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    labels = np.repeat([0, 2], 6)  # cluster 1 is empty
    fig = plot_cluster_grid(images, labels, np.linspace(0, 1, 12), n_per_cluster=4,
                            n_clusters=3)
    names = [ax.get_ylabel() for ax in fig.axes[::4]]
    assert names == ["cluster 0\n(n=6)", "cluster 1\n(empty)", "cluster 2\n(n=6)"]
    assert [len(ax.images) for ax in fig.axes[4:8]] == [0, 0, 0, 0]


def test_confusion_matrix_after_matching():
    y = np.array([0, 0, 1, 1, 2, 2])
    labels = np.array([2, 2, 0, 0, 1, 1])  # a perfect clustering with permuted ids
    fig = plot_confusion_matrix(y, labels)
    ax = fig.axes[0]
    table = ax.images[0].get_array()
    assert np.array_equal(np.asarray(table), np.diag([2, 2, 2]))  # matched onto the diagonal
    assert "1.000" in ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_map(method):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 5))
    fig = plot_embedding_map(emb, np.arange(40) % 2, reliable=rng.random(40) > 0.5,
                             method=method)
    ax = fig.axes[0]
    assert _titled(fig) and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.collections) == 4  # reliable and other points of 2 clusters


def test_embedding_map_bad_method():
    with pytest.raises(ValueError, match="method"):
        plot_embedding_map(np.zeros((5, 2)), np.zeros(5, int), method="umap")


def test_model_figures():
    X = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    model = SpiceClustering(2, backbone="precomputed", n_heads=3, max_epochs=2, semi=None,
                            random_state=0).fit(X)
    fig = plot_head_losses(model)
    assert _titled(fig) and len(fig.axes[0].patches) == 3
    assert f"head {model.best_head_}" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="not pretrained"):
        plot_pretraining_loss(model)
    model.pretrain_history_ = np.array([3.0, 2.5, 2.0])
    fig = plot_pretraining_loss(model)
    assert fig.axes[0].get_ylabel() == "NT-Xent loss"
