"""Tests of spice_learn.neighbors (blocked cosine neighbours, reliability scores)."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from spice_learn.neighbors import nearest_neighbors, reliability_scores


def brute_force(X, k):
    """scikit-learn's exact cosine search, dropping each sample itself."""
    idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(X)
    idx = idx.kneighbors(X, return_distance=False)
    return np.stack([row[row != i][:k] for i, row in enumerate(idx)])


@pytest.mark.parametrize("block_bytes", [1, 4 * 50 * 7, 64 << 20])
@pytest.mark.parametrize("n,d,k", [(50, 5, 1), (120, 16, 10), (97, 3, 96)])
def test_equals_brute_force_reference(n, d, k, block_bytes):
    X = np.random.default_rng(n + d).normal(size=(n, d)).astype(np.float32)
    got = nearest_neighbors(X, k, block_bytes=block_bytes)
    assert got.shape == (n, k) and got.dtype == torch.int64
    ref = brute_force(X.astype(np.float64), k)
    # Compare the neighbour sets (the order of near-ties may differ in float32).
    for i in range(n):
        assert set(got[i].tolist()) == set(ref[i].tolist()), f"row {i}"


def test_neighbours_sorted_by_decreasing_similarity():
    X = torch.randn(80, 6, generator=torch.Generator().manual_seed(0))
    idx = nearest_neighbors(X, 15, block_bytes=4 * 80 * 9)
    x = torch.nn.functional.normalize(X, dim=1)
    sims = (x[:, None, :] * x[idx]).sum(-1)
    assert torch.all(sims[:, :-1] >= sims[:, 1:] - 1e-6)


def test_self_is_excluded_even_with_duplicates():
    X = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # every row has one twin
    idx = nearest_neighbors(X, 1).numpy()[:, 0]
    np.testing.assert_array_equal(idx, [1, 0, 3, 2, 5, 4])


def test_scale_does_not_matter():
    X = np.random.default_rng(1).normal(size=(40, 4))
    scaled = X * np.random.default_rng(2).uniform(0.1, 10, size=(40, 1))
    assert torch.equal(nearest_neighbors(X, 5), nearest_neighbors(scaled, 5))


def test_input_is_not_modified():
    X = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)
    before = X.copy()
    nearest_neighbors(X, 3)
    np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize("k", [0, 10, 11])
def test_bad_n_neighbors(k):
    with pytest.raises(ValueError, match="n_neighbors"):
        nearest_neighbors(np.ones((10, 2)), k)


def test_bad_shape():
    with pytest.raises(ValueError, match="2-D"):
        nearest_neighbors(np.ones(10), 2)


def test_reliability_scores_hand_made_example():
    # Points 0-3 on a line; labels 0, 0, 0, 1; two neighbours each.
    neighbors = np.array([[1, 2], [0, 2], [1, 3], [2, 1]])
    labels = np.array([0, 0, 0, 1])
    # 0: {1, 2} both label 0 -> 1; 1: {0, 2} -> 1; 2: {1, 3} -> 1/2; 3: {2, 1} -> 0.
    np.testing.assert_allclose(reliability_scores(neighbors, labels), [1.0, 1.0, 0.5, 0.0])


def test_reliability_from_search_on_two_blobs():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (20, 2)) + [5, 0], rng.normal(0, 0.1, (20, 2)) + [0, 5]])
    labels = np.repeat([0, 1], 20)
    labels[0] = 1  # one sample in the wrong cluster
    scores = reliability_scores(nearest_neighbors(X, 5), labels)
    assert scores[0] == 0.0
    assert np.all(scores[20:] == 1.0)
