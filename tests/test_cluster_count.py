"""Tests of spice_learn.cluster_count: choosing the number of clusters without labels."""

import numpy as np
import pytest
import torch

from spice_learn.cluster_count import (
    AUTO_MAX_CLUSTERS,
    check_n_clusters,
    cosine_silhouette,
    default_search_settings,
    search_n_clusters,
)
from spice_learn.scan_heads import SCAN_ENTROPY_WEIGHT
from spice_learn.spice_self import HeadSettings
from spice_learn.view_cache import feature_cache, neighbour_graph


def blobs_on_sphere(n_groups, per_group=60, dim=16, spread=0.15, seed=0):
    """``n_groups`` tight groups around random unit directions, labels alongside."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_groups, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_groups), per_group)
    x = centers[labels] + spread * rng.normal(size=(len(labels), dim)) / np.sqrt(dim)
    return torch.from_numpy(x.astype(np.float32)), labels


# ------------------------------------------------------------------ check_n_clusters
def test_auto_is_two_to_twenty_cut_for_small_data():
    assert check_n_clusters("auto", 1000) == tuple(range(2, AUTO_MAX_CLUSTERS + 1))
    assert check_n_clusters("auto", 13) == tuple(range(2, 7))


def test_candidates_are_sorted_and_unique():
    assert check_n_clusters([5, 3, 3, 8], 100) == (3, 5, 8)
    assert check_n_clusters(range(2, 5), 100) == (2, 3, 4)
    assert check_n_clusters(np.arange(2, 4), 100) == (2, 3)
    assert check_n_clusters(7, 100) == 7


@pytest.mark.parametrize("value, error, match", [
    ([], ValueError, "empty"),
    (range(5, 2), ValueError, "empty"),
    ([1, 3], ValueError, ">= 2"),
    ([2, 2.5], TypeError, "ints"),
    ("many", ValueError, "'auto'"),
    (0, ValueError, ">= 1"),
    (2.0, TypeError, "n_clusters"),
    (True, TypeError, "n_clusters"),
    (None, TypeError, "n_clusters"),
])
def test_bad_n_clusters(value, error, match):
    with pytest.raises(error, match=match):
        check_n_clusters(value, 100)


def test_candidates_beyond_the_data_are_refused():
    with pytest.raises(ValueError, match="too large for 10 samples"):
        check_n_clusters(range(2, 7), 10)
    with pytest.raises(ValueError, match="must be <= n_samples=10"):
        check_n_clusters(11, 10)
    with pytest.raises(ValueError, match="at least 4 samples"):
        check_n_clusters("auto", 3)


# ------------------------------------------------------------------ silhouette
def test_silhouette_prefers_the_true_groups_to_a_split_or_a_merge():
    x, labels = blobs_on_sphere(4)
    true = cosine_silhouette(x, labels)
    split = labels.copy()
    split[::2] += 4  # every group cut in two at random
    assert true > 0.5
    assert true > cosine_silhouette(x, np.minimum(labels, 2)) + 0.1  # groups 2 and 3 merged
    assert true > cosine_silhouette(x, split) + 0.3
    assert cosine_silhouette(x, np.zeros(len(labels), dtype=int)) == 0.0


def test_silhouette_subsamples_large_data_reproducibly():
    x, labels = blobs_on_sphere(3, per_group=100)
    a = cosine_silhouette(x, labels, max_samples=120, seed=1)
    b = cosine_silhouette(x, labels, max_samples=120, seed=1)
    full = cosine_silhouette(x, labels)
    assert a == b
    assert abs(a - full) < 0.1


# ------------------------------------------------------------------ the search
def test_search_settings_have_fewer_heads_and_epochs():
    settings = HeadSettings(n_heads=10)
    search = default_search_settings(settings, 1500)
    full = settings.resolved(1500, 10)
    assert search.n_heads == 3
    assert 5 <= search.max_epochs <= full.max_epochs // 3
    assert default_search_settings(HeadSettings(n_heads=10, max_epochs=6), 1500).max_epochs == 5
    # one entropy weight per candidate k, not the final fit's choice among several
    assert search.entropy_weight == SCAN_ENTROPY_WEIGHT
    assert default_search_settings(HeadSettings(entropy_weight=1.0), 1500).entropy_weight == 1.0


@pytest.mark.parametrize("n_groups", [3, 6])
def test_search_finds_the_number_of_separated_groups(n_groups):
    x, _ = blobs_on_sphere(n_groups, per_group=50)
    cache = feature_cache(x, 2, 1, seed=0)
    neighbors = neighbour_graph(cache, 20, torch.device("cpu"))
    candidates = tuple(range(2, 9))
    settings = HeadSettings(n_heads=3)
    lines = []
    result = search_n_clusters(cache, neighbors, candidates, settings, seed=0,
                               device=torch.device("cpu"), log=lines.append)
    assert result.best == n_groups
    assert result.candidates == candidates
    assert result.scores.shape == (len(candidates),)
    assert int(np.argmax(result.scores)) == candidates.index(n_groups)
    assert len(lines) == len(candidates) and "silhouette" in lines[0]
