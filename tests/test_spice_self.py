"""Tests of spice_learn.spice_self (Algorithm 1 and label-free head selection)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spice_learn import SpiceClustering
from spice_learn import spice_self as spice_self_module
from spice_learn.embedding import ViewCache
from spice_learn.heads import train_epochs
from spice_learn.metrics import cluster_accuracy
from spice_learn.neighbors import AGREEMENT_NEIGHBORS, nearest_neighbors, neighbour_agreement
from spice_learn.scan_heads import SCAN_ENTROPY_WEIGHTS
from spice_learn.spice_self import (
    HeadSettings,
    default_batch_size,
    default_minibatch_size,
    fit_spice_self,
    head_probabilities,
    head_selection_losses,
    spice_head_epochs,
    train_heads,
)

N, K, D = 400, 4, 16
CPU = torch.device("cpu")


def make_cache(seed=0, n=N, k=K, d=D, dtype=torch.float32):
    """Well separated Gaussian clusters; weak/strong views are noisy copies."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=gen) * 3
    y = torch.arange(n) % k
    x = centers[y] + torch.randn(n, d, generator=gen)
    weak = torch.stack([x + 0.1 * torch.randn(n, d, generator=gen) for _ in range(2)])
    strong = torch.stack([x + 0.3 * torch.randn(n, d, generator=gen) for _ in range(3)])
    cache = ViewCache(
        F.normalize(x, dim=1).to(dtype),
        F.normalize(weak, dim=2).to(dtype),
        F.normalize(strong, dim=2).to(dtype),
    )
    return cache, y.numpy()


def train(cache, *, n_heads=6, max_epochs=40, seed=0, **kwargs):
    params = dict(
        n_clusters=K, n_heads=n_heads, hidden_dim=D, batch_size=400, minibatch_size=64,
        max_epochs=max_epochs, learning_rate=5e-3, confidence_ratio=0.5, entropy_weight=0.0,
        seed=seed, device=CPU,
    )
    params.update(kwargs)
    return train_heads(cache, **params)


@pytest.fixture(scope="module")
def trained():
    cache, y = make_cache(0)
    heads, history = train(cache)
    return cache, y, heads, history


# ------------------------------------------------------------ paper defaults
@pytest.mark.parametrize("k,m", [(10, 1000), (15, 1500), (20, 2000), (200, 5000)])
def test_default_batch_size_follows_paper(k, m):
    assert default_batch_size(k) == m


@pytest.mark.parametrize("k,m2", [(10, 128), (15, 128), (20, 128), (200, 256)])
def test_default_minibatch_size_follows_paper(k, m2):
    assert default_minibatch_size(k) == m2


def test_default_sizes_are_ints_in_range():
    for k in (2, 3, 7, 50, 99, 100, 1000):
        assert isinstance(default_batch_size(k), int)
        assert 1000 <= default_batch_size(k) <= 5000
        assert default_minibatch_size(k) in (128, 256)


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_heads_reaches_high_accuracy_with_selected_head(seed):
    cache, y = make_cache(seed)
    heads, history = train(cache, seed=seed)
    losses = head_selection_losses(heads, cache, confidence_ratio=0.5)
    best = int(np.argmin(losses))
    probs = head_probabilities(heads, cache.original)
    labels = probs[best].argmax(dim=1).numpy()  # y used only for the assertion below
    assert cluster_accuracy(y, labels) >= 0.95
    # The selected head is (one of) the most accurate.
    accs = [cluster_accuracy(y, probs[h].argmax(dim=1).numpy()) for h in range(heads.n_heads)]
    assert accs[best] == pytest.approx(max(accs))


def test_history_shape_and_values(trained):
    _, _, heads, history = trained
    assert isinstance(history, np.ndarray)
    assert history.shape == (40, 6)
    assert np.isfinite(history).all()
    # DS-CE with k classes is bounded below by log(k - 1 + e) - 1.
    assert (history >= math.log(K - 1 + math.e) - 1 - 1e-4).all()
    best = history[-1].argmin()
    assert history[-1, best] < history[0, best]


def test_train_heads_returns_eval_module_with_right_shape(trained):
    cache, _, heads, _ = trained
    assert not heads.training
    assert heads.n_heads == 6 and heads.n_clusters == K and heads.in_dim == D
    probs = head_probabilities(heads, cache.original, chunk_size=64)
    assert probs.shape == (6, N, K)
    torch.testing.assert_close(probs.sum(dim=2), torch.ones(6, N))


def test_head_probabilities_chunking_is_invisible(trained):
    cache, _, heads, _ = trained
    a = head_probabilities(heads, cache.original, chunk_size=37)
    b = head_probabilities(heads, cache.original)
    torch.testing.assert_close(a, b)


def test_train_heads_is_deterministic():
    cache, _ = make_cache(3, n=120)
    h1, hist1 = train(cache, n_heads=2, max_epochs=3, seed=5, batch_size=60, minibatch_size=20)
    h2, hist2 = train(cache, n_heads=2, max_epochs=3, seed=5, batch_size=60, minibatch_size=20)
    np.testing.assert_array_equal(hist1, hist2)
    for (name, a), (_, b) in zip(h1.state_dict().items(), h2.state_dict().items()):
        assert torch.equal(a, b), name
    h3, hist3 = train(cache, n_heads=2, max_epochs=3, seed=6, batch_size=60, minibatch_size=20)
    assert not np.array_equal(hist1, hist3)


def test_paused_spice_training_goes_on_as_one_longer_training():
    cache, _ = make_cache(1)
    whole, whole_history = train(cache, n_heads=3, max_epochs=4)
    epochs = spice_head_epochs(cache, n_clusters=K, n_heads=3, hidden_dim=D, batch_size=400,
                               minibatch_size=64, learning_rate=5e-3, confidence_ratio=0.5,
                               entropy_weight=0.0, seed=0, device=CPU)
    paused, first = train_epochs(epochs, 1, desc="test")
    head_selection_losses(paused, cache, confidence_ratio=0.5)  # as fit_spice_self does
    heads, rest = train_epochs(epochs, 3, desc="test")
    for name in ("w1", "b1", "w2", "b2"):
        assert torch.equal(getattr(heads, name), getattr(whole, name))
    assert torch.equal(heads.norm.running_var, whole.norm.running_var)
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole_history)


def test_train_heads_accepts_float16_cache_and_entropy_term():
    cache, _ = make_cache(4, n=120, dtype=torch.float16)
    heads, history = train(
        cache, n_heads=2, max_epochs=2, batch_size=1000, minibatch_size=32, entropy_weight=1.0
    )
    assert history.shape == (2, 2)
    assert np.isfinite(history).all()
    losses = head_selection_losses(heads, cache, confidence_ratio=0.5)
    assert losses.shape == (2,) and np.isfinite(losses).all()


def test_train_heads_does_not_touch_global_rng():
    cache, _ = make_cache(5, n=80)
    state = torch.get_rng_state()
    train(cache, n_heads=2, max_epochs=2, batch_size=40, minibatch_size=16)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------- head selection
def _constant_head(heads, h, cluster=0):
    """Make head ``h`` predict ``cluster`` for every input."""
    with torch.no_grad():
        heads.w2[h].zero_()
        heads.b2[h].zero_()
        heads.b2[h, cluster] = 20.0


def _uniform_head(heads, h):
    with torch.no_grad():
        heads.w2[h].zero_()
        heads.b2[h].zero_()


def _copy(heads):
    copy = heads.select(list(range(heads.n_heads)))
    return copy.eval()


def test_head_selection_losses_shape_and_bounds(trained):
    cache, _, heads, _ = trained
    losses = head_selection_losses(heads, cache, confidence_ratio=0.5)
    assert isinstance(losses, np.ndarray)
    assert losses.shape == (6,)
    assert (losses >= math.log(K - 1 + math.e) - 1 - 1e-4).all()
    assert (losses <= math.log(K - 1 + math.e) + 1e-4).all()


def test_corrupted_heads_get_higher_loss_and_are_not_selected(trained):
    cache, _, heads, _ = trained
    before = head_selection_losses(heads, cache, confidence_ratio=0.5)
    best = int(np.argmin(before))
    corrupted_heads = _copy(heads)
    corrupted = [best, (best + 1) % 6]
    _constant_head(corrupted_heads, corrupted[0], cluster=2)
    _uniform_head(corrupted_heads, corrupted[1])
    after = head_selection_losses(corrupted_heads, cache, confidence_ratio=0.5)
    intact = [h for h in range(6) if h not in corrupted]
    # Untouched heads keep their loss exactly (heads are independent).
    np.testing.assert_allclose(after[intact], before[intact], rtol=1e-5)
    for h in corrupted:
        assert after[h] > before[h]
        assert after[h] > after[intact].max()
    assert int(np.argmin(after)) not in corrupted
    # Known values: uniform output -> log(k); constant one-hot-ish output ->
    # (log(k-1+e) - 1) / k + log(k-1+e) * (k-1) / k.
    assert after[corrupted[1]] == pytest.approx(math.log(K), rel=1e-4)
    expected_const = (math.log(K - 1 + math.e) - 1) / K + math.log(K - 1 + math.e) * (K - 1) / K
    assert after[corrupted[0]] == pytest.approx(expected_const, rel=1e-3)


def test_only_intact_head_is_selected(trained):
    cache, y, heads, _ = trained
    keep = 4
    corrupted_heads = _copy(heads)
    for h in range(6):
        if h != keep:
            (_constant_head if h % 2 else _uniform_head)(corrupted_heads, h)
    losses = head_selection_losses(corrupted_heads, cache, confidence_ratio=0.5)
    assert int(np.argmin(losses)) == keep


def test_selection_uses_no_labels():
    # fit(X, y) ignores y: true labels, shuffled labels and none give the same losses,
    # the same selected head and the same clusters.
    cache, y = make_cache(seed=5)
    X = cache.original.numpy()
    shuffled = np.random.default_rng(0).permutation(y)
    fits = [SpiceClustering(K, backbone="precomputed", head_objective="spice", n_heads=6,
                            max_epochs=3, semi=None, random_state=0).fit(X, labels)
            for labels in (None, y, shuffled)]
    for other in fits[1:]:
        np.testing.assert_array_equal(other.head_losses_, fits[0].head_losses_)
        assert other.best_head_ == fits[0].best_head_
        np.testing.assert_array_equal(other.labels_, fits[0].labels_)


# ------------------------------------------------- entropy weight chosen without labels
def make_imbalanced_cache(seed, sizes=(300, 60, 40), d=D):
    """Separated Gaussian clusters of very unequal sizes, and their neighbour graph."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(sizes), d, generator=gen) * 3
    y = torch.cat([torch.full((size,), i) for i, size in enumerate(sizes)])
    x = centers[y] + torch.randn(len(y), d, generator=gen)
    weak = torch.stack([x + 0.1 * torch.randn(x.shape, generator=gen) for _ in range(2)])
    strong = torch.stack([x + 0.3 * torch.randn(x.shape, generator=gen) for _ in range(3)])
    cache = ViewCache(F.normalize(x, dim=1), F.normalize(weak, dim=2),
                      F.normalize(strong, dim=2))
    return cache, nearest_neighbors(cache.original, 20, device=CPU), y.numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_entropy_weight_lets_imbalanced_clusters_keep_their_size(seed):
    cache, neighbors, y = make_imbalanced_cache(seed)
    quick = HeadSettings(n_heads=4, max_epochs=20)
    auto = fit_spice_self(cache, neighbors, 3, quick, seed=seed, device=CPU)
    scan = fit_spice_self(cache, neighbors, 3, HeadSettings(n_heads=4, max_epochs=20,
                          entropy_weight=SCAN_ENTROPY_WEIGHTS[0]), seed=seed, device=CPU)
    assert set(auto.weight_scores) == set(SCAN_ENTROPY_WEIGHTS)
    assert auto.settings.entropy_weight < SCAN_ENTROPY_WEIGHTS[0]
    # SCAN's weight splits the large cluster to even out the sizes; the chosen one does not
    assert cluster_accuracy(y, scan.self_labels) < 0.8
    assert cluster_accuracy(y, auto.self_labels) > 0.95


def test_auto_entropy_weight_keeps_the_heads_of_the_best_agreeing_weight():
    cache, neighbors, _ = make_imbalanced_cache(2, sizes=(200, 100, 100))
    quick = HeadSettings(n_heads=3, max_epochs=10)
    logged = []
    auto = fit_spice_self(cache, neighbors, 3, quick, seed=0, device=CPU, log=logged.append)
    assert auto.settings.entropy_weight in auto.weight_scores
    fixed = fit_spice_self(cache, neighbors, 3,
                           HeadSettings(n_heads=3, max_epochs=10,
                                        entropy_weight=auto.settings.entropy_weight),
                           seed=0, device=CPU)
    assert fixed.weight_scores is None
    np.testing.assert_array_equal(auto.self_labels, fixed.self_labels)
    np.testing.assert_array_equal(auto.losses, fixed.losses)
    assert any("entropy weight" in line for line in logged)


def count_epochs(monkeypatch):
    """Count the SCAN head epochs each entropy weight trains: {weight: epochs}."""
    trained = {}
    real = spice_self_module.scan_head_epochs

    def counted(*args, entropy_weight, **kwargs):
        for item in real(*args, entropy_weight=entropy_weight, **kwargs):
            trained[entropy_weight] = trained.get(entropy_weight, 0) + 1
            yield item

    monkeypatch.setattr(spice_self_module, "scan_head_epochs", counted)
    return trained


def test_every_weight_trains_to_the_end_and_is_scored_there(monkeypatch):
    # the weights are compared on their final clusterings (a lower weight may still be
    # filling or moving its clusters earlier on)
    cache, neighbors, _ = make_imbalanced_cache(1, sizes=(200, 100, 100))
    trained = count_epochs(monkeypatch)
    logged = []
    auto = fit_spice_self(cache, neighbors, 3, HeadSettings(n_heads=3, max_epochs=9),
                          seed=0, device=CPU, log=logged.append)
    assert trained == {w: 9 for w in SCAN_ENTROPY_WEIGHTS}
    assert auto.history.shape == (9, 3)
    graph = neighbors[:, :AGREEMENT_NEIGHBORS]
    for w in SCAN_ENTROPY_WEIGHTS:
        alone = fit_spice_self(cache, neighbors, 3, HeadSettings(n_heads=3, max_epochs=9,
                               entropy_weight=w), seed=0, device=CPU)
        assert auto.weight_scores[w] == pytest.approx(
            neighbour_agreement(alone.self_labels, graph, graph.shape[1]))
    assert any(f"entropy weight {auto.settings.entropy_weight:g} (its clusters share" in line
               for line in logged)


def test_spice_heads_do_not_search_entropy_weights():
    cache, neighbors, _ = make_imbalanced_cache(0)
    result = fit_spice_self(cache, None, 3, HeadSettings(objective="spice", n_heads=2,
                            max_epochs=2), seed=0, device=CPU)
    assert result.weight_scores is None and result.settings.entropy_weight == 0.0


def test_auto_entropy_weight_only_chooses_among_weights_that_fill_every_cluster():
    # 3 groups in 5 clusters: lower weights merge the splits, which raises the agreement
    cache, neighbors, _ = make_imbalanced_cache(0, sizes=(150, 150, 100))
    quick = HeadSettings(n_heads=3, max_epochs=15)
    auto = fit_spice_self(cache, neighbors, 5, quick, seed=0, device=CPU)
    assert len(np.unique(auto.self_labels)) == 5
    assert auto.weight_scores[auto.settings.entropy_weight] < max(auto.weight_scores.values())
    # when no weight fills all 6 clusters, the one that fills the most wins
    cache, neighbors, _ = make_imbalanced_cache(3, sizes=(100, 100, 100))
    auto = fit_spice_self(cache, neighbors, 6, quick, seed=3, device=CPU)
    assert len(np.unique(auto.self_labels)) == 5
    assert auto.weight_scores[auto.settings.entropy_weight] < max(auto.weight_scores.values())


def test_several_entropy_weights_need_the_neighbour_graph():
    cache, _, _ = make_imbalanced_cache(0)
    with pytest.raises(ValueError, match="neighbou?r"):
        fit_spice_self(cache, None, 3, HeadSettings(objective="spice", n_heads=2, max_epochs=1,
                       entropy_weight=(0.0, 1.0)), seed=0, device=CPU)
