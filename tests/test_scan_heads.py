"""Tests of spice_learn.scan_heads (SCAN neighbour-consistency heads)."""

import numpy as np
import torch

from spice_learn.heads import MultiHeadClassifier, train_epochs
from spice_learn.losses import neighbour_consistency
from spice_learn.metrics import cluster_accuracy
from spice_learn.neighbors import nearest_neighbors
from spice_learn.scan_heads import (
    MIN_SCAN_NEIGHBORS,
    SCAN_NEIGHBORS,
    default_scan_epochs,
    scan_head_epochs,
    scan_neighbors,
    scan_selection_losses,
    train_scan_heads,
)
from test_spice_self import D, K, make_cache

CPU = torch.device("cpu")


def train(cache, neighbors, **kwargs):
    params = dict(n_clusters=K, n_heads=4, hidden_dim=D, minibatch_size=64, max_epochs=15,
                  learning_rate=1e-3, entropy_weight=5.0, seed=0, device=CPU)
    params.update(kwargs)
    return train_scan_heads(cache, neighbors, **params)


def test_neighbour_consistency_rewards_agreement():
    onehot = torch.eye(3)[None]  # (1, 3, 3)
    agree = neighbour_consistency(onehot * 0.98 + 0.01 / 3, onehot * 0.98 + 0.01 / 3)
    disagree = neighbour_consistency(onehot * 0.98 + 0.01 / 3, onehot.roll(1, dims=1) * 0.98 + 0.01 / 3)
    assert agree.shape == (1,)
    assert agree.item() < 0.1 < 3.0 < disagree.item()


def test_scan_heads_recover_clusters_and_use_all_of_them():
    cache, y = make_cache(seed=4)
    neighbors = nearest_neighbors(cache.original, 10)
    heads, history = train(cache, neighbors)
    assert history.shape == (15, 4)
    assert (history[-1] < history[0]).all()  # every head learned
    losses = scan_selection_losses(heads, cache, neighbors, entropy_weight=5.0)
    best = int(np.argmin(losses))
    labels = heads(cache.original.float())[best].argmax(1).numpy()
    assert len(np.unique(labels)) == K
    assert cluster_accuracy(y, labels) > 0.95


def test_entropy_term_keeps_clusters_in_use():
    # Without the entropy term, the trivial solution (one cluster for all) is
    # perfectly consistent; with it, every cluster is used.
    cache, _ = make_cache(seed=5)
    neighbors = nearest_neighbors(cache.original, 10)
    with_term, _ = train(cache, neighbors, entropy_weight=5.0, max_epochs=10)
    without, _ = train(cache, neighbors, entropy_weight=0.0, max_epochs=10)
    used = [len(np.unique(h(cache.original.float()).argmax(2).numpy()[0])) for h in (with_term, without)]
    assert used[0] == K
    assert used[1] <= used[0]


def test_selection_loss_prefers_the_head_that_follows_the_neighbours():
    cache, y = make_cache(seed=6)
    neighbors = nearest_neighbors(cache.original, 10)
    heads, _ = train(cache, neighbors, n_heads=2, max_epochs=10)
    fresh = MultiHeadClassifier(2, D, D, K, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # head 1 back to untrained weights
        for name in ("w1", "b1", "w2", "b2"):
            getattr(heads, name)[1].copy_(getattr(fresh, name)[1])
    losses = scan_selection_losses(heads, cache, neighbors, entropy_weight=5.0)
    assert losses[0] < losses[1]
    labels = heads(cache.original.float()).argmax(2).numpy()
    assert cluster_accuracy(y, labels[0]) > cluster_accuracy(y, labels[1])


def test_same_seed_same_heads_and_global_rng_untouched():
    cache, _ = make_cache(seed=7)
    neighbors = nearest_neighbors(cache.original, 5)
    state = torch.get_rng_state()
    a, _ = train(cache, neighbors, max_epochs=3)
    b, _ = train(cache, neighbors, max_epochs=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.w1, b.w1) and torch.equal(a.w2, b.w2)


def test_scan_neighbours_follow_the_cluster_size():
    assert scan_neighbors(9_298, 10) == SCAN_NEIGHBORS == 20  # USPS: SCAN's own number
    assert scan_neighbors(70_000, 10) == SCAN_NEIGHBORS
    assert scan_neighbors(1_797, 10) == MIN_SCAN_NEIGHBORS == 5  # sklearn digits: 180 a class
    assert scan_neighbors(10_000, 20) == 12  # 500 a class: in between
    assert scan_neighbors(40, 10) == 3  # always below the average cluster size
    assert scan_neighbors(10, 10) == 1


def test_default_scan_epochs():
    assert default_scan_epochs(1500) == 100
    assert default_scan_epochs(10_000) == 15
    assert default_scan_epochs(70_000) == 5


def test_default_scan_minibatch_size():
    from spice_learn.scan_heads import default_scan_minibatch_size

    assert default_scan_minibatch_size(100) == 16
    assert default_scan_minibatch_size(1797) == 224
    assert default_scan_minibatch_size(70_000) == 256


def test_paused_training_goes_on_as_one_longer_training():
    cache, _ = make_cache(seed=8)
    neighbors = nearest_neighbors(cache.original, 5)
    whole, whole_history = train(cache, neighbors, max_epochs=5)
    params = dict(n_clusters=K, n_heads=4, hidden_dim=D, minibatch_size=64, learning_rate=1e-3,
                  entropy_weight=5.0, seed=0, device=CPU)
    epochs = scan_head_epochs(cache, neighbors, **params)
    _, first = train_epochs(epochs, 2, desc="test")
    # in between, the paused heads are used in eval mode, as fit_spice_self does
    scan_selection_losses(train_epochs(epochs, 1, desc="test")[0], cache, neighbors,
                          entropy_weight=5.0)
    heads, rest = train_epochs(epochs, 2, desc="test")
    assert not heads.training
    for name in ("w1", "b1", "w2", "b2"):
        assert torch.equal(getattr(heads, name), getattr(whole, name))
    assert torch.equal(heads.norm.running_mean, whole.norm.running_mean)
    np.testing.assert_array_equal(np.concatenate([first, whole_history[2:3], rest]),
                                  whole_history)
