"""Tests for spice_learn.metrics: Hungarian accuracy vs. brute force, NMI/ARI, scorers."""

import itertools

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import GridSearchCV

from spice_learn.metrics import (
    accuracy_scorer,
    ari_scorer,
    cluster_accuracy,
    clustering_scores,
    nmi_scorer,
)


def brute_force_accuracy(y_true, y_pred):
    """Best one-to-one cluster->class mapping by enumerating all injective mappings.

    Unmatched clusters (more clusters than classes) and unmatched classes (fewer
    clusters than classes) contribute errors.
    """
    y_true = list(y_true)
    y_pred = list(y_pred)
    classes = sorted(set(y_true), key=repr)
    clusters = sorted(set(y_pred), key=repr)
    best = 0
    if len(clusters) <= len(classes):
        # Each cluster gets a distinct class.
        for perm in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, perm))
            best = max(best, sum(mapping[p] == t for t, p in zip(y_true, y_pred)))
    else:
        # Each class gets a distinct cluster; the other clusters stay unmatched.
        for perm in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(perm, classes))
            best = max(
                best,
                sum(p in mapping and mapping[p] == t for t, p in zip(y_true, y_pred)),
            )
    return best / len(y_true)


def _random_labels(n_classes, n_clusters, seed, n=40):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(n_classes, size=n)
    # Partly correlated with the truth so that the optimum is not trivial.
    shift = rng.permutation(max(n_classes, n_clusters))
    noisy = rng.random(n) < 0.4
    y_pred = np.where(noisy, rng.integers(n_clusters, size=n), shift[y_true] % n_clusters)
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_clusters", [2, 3, 4, 5])
@pytest.mark.parametrize("n_classes", [2, 3, 4, 5])
def test_cluster_accuracy_matches_brute_force(n_classes, n_clusters, seed):
    y_true, y_pred = _random_labels(n_classes, n_clusters, seed)
    expected = brute_force_accuracy(y_true, y_pred)
    got = cluster_accuracy(y_true, y_pred)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= got <= 1.0


@pytest.mark.parametrize("seed", range(5))
def test_cluster_accuracy_brute_force_small_uncorrelated(seed):
    rng = np.random.default_rng(100 + seed)
    n_classes, n_clusters = rng.integers(1, 6, size=2)
    y_true = rng.integers(n_classes, size=15)
    y_pred = rng.integers(n_clusters, size=15)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(brute_force_accuracy(y_true, y_pred))


def test_surplus_clusters_count_as_errors():
    # One class, two clusters: only one cluster can be matched.
    assert cluster_accuracy([0, 0, 0, 0], [0, 0, 1, 1]) == 0.5
    # Two classes, one cluster: one class stays unmatched.
    assert cluster_accuracy([0, 0, 1, 1, 1], [7, 7, 7, 7, 7]) == pytest.approx(0.6)
    # Every sample in its own cluster.
    assert cluster_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == 0.5


def test_docstring_examples():
    assert cluster_accuracy([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert cluster_accuracy([0, 0, 0, 0], [0, 0, 1, 1]) == 0.5


@pytest.mark.parametrize("seed", range(4))
def test_label_permutation_invariance(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = _random_labels(4, 5, seed)
    base = cluster_accuracy(y_true, y_pred)
    perm_pred = rng.permutation(5)
    perm_true = rng.permutation(4)
    assert cluster_accuracy(y_true, perm_pred[y_pred]) == pytest.approx(base)
    assert cluster_accuracy(perm_true[y_true], y_pred) == pytest.approx(base)
    assert cluster_accuracy(perm_true[y_true], perm_pred[y_pred]) == pytest.approx(base)
    # Reordering the samples changes nothing either.
    order = rng.permutation(len(y_true))
    assert cluster_accuracy(y_true[order], y_pred[order]) == pytest.approx(base)


def test_arbitrary_label_values():
    y_true = ["cat", "cat", "dog", "dog", "bird", "bird"]
    y_pred = [-5, -5, 17, 17, 17, 3]
    expected = brute_force_accuracy(y_true, y_pred)
    assert expected == pytest.approx(5 / 6)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(expected)
    assert cluster_accuracy(np.array(y_true), np.array(y_pred)) == pytest.approx(expected)
    # Negative and non-contiguous integers on both sides.
    assert cluster_accuracy([-1, -1, 1000, 1000], [42, 42, -3, -3]) == 1.0
    # Strings as cluster labels too.
    assert cluster_accuracy([0, 1, 1], ["a", "b", "b"]) == 1.0


@pytest.mark.parametrize("n_clusters", [1, 2, 5, 10])
def test_perfect_clustering(n_clusters):
    rng = np.random.default_rng(n_clusters)
    y_true = rng.integers(n_clusters, size=50)
    relabel = rng.permutation(n_clusters) + 100
    assert cluster_accuracy(y_true, relabel[y_true]) == 1.0
    assert cluster_accuracy(y_true, y_true) == 1.0


def test_column_vector_labels_accepted():
    y = np.array([[0], [0], [1], [1]])
    assert cluster_accuracy(y, [1, 1, 0, 0]) == 1.0


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        cluster_accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="same length"):
        clustering_scores([0, 1], [0, 1, 1])


def test_empty_raises():
    with pytest.raises(ValueError, match="must not be empty"):
        cluster_accuracy([], [])
    with pytest.raises(ValueError, match="must not be empty"):
        clustering_scores(np.array([]), np.array([]))


def test_2d_labels_raise():
    with pytest.raises(ValueError, match="1d array"):
        cluster_accuracy(np.zeros((3, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("seed", range(3))
def test_clustering_scores_match_sklearn(seed):
    y_true, y_pred = _random_labels(3, 4, seed, n=60)
    scores = clustering_scores(y_true, y_pred)
    assert set(scores) == {"acc", "nmi", "ari"}
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["acc"] == pytest.approx(cluster_accuracy(y_true, y_pred))
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, y_pred))
    assert scores["ari"] == pytest.approx(adjusted_rand_score(y_true, y_pred))


def test_clustering_scores_perfect():
    scores = clustering_scores(["a", "a", "b", "c"], [2, 2, 0, 1])
    assert scores == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=90, centers=3, cluster_std=0.3, random_state=0)
    return X, y


def test_scorers_called_directly(blobs):
    X, y = blobs
    km = KMeans(n_clusters=3, n_init=3, random_state=0).fit(X)
    labels = km.predict(X)
    assert accuracy_scorer(km, X, y) == pytest.approx(cluster_accuracy(y, labels))
    assert nmi_scorer(km, X, y) == pytest.approx(normalized_mutual_info_score(y, labels))
    assert ari_scorer(km, X, y) == pytest.approx(adjusted_rand_score(y, labels))
    assert accuracy_scorer(km, X, y) == 1.0


@pytest.mark.parametrize("scorer", [accuracy_scorer, nmi_scorer, ari_scorer])
def test_scorers_in_grid_search(blobs, scorer):
    X, y = blobs
    search = GridSearchCV(
        KMeans(n_init=3, random_state=0), {"n_clusters": [2, 3]}, scoring=scorer, cv=2
    )
    search.fit(X, y)
    assert search.best_params_ == {"n_clusters": 3}
    scores = search.cv_results_["mean_test_score"]
    assert scores[1] == pytest.approx(1.0)
    assert scores[0] < scores[1]


def test_scorers_multimetric_grid_search(blobs):
    X, y = blobs
    search = GridSearchCV(
        KMeans(n_init=3, random_state=0),
        {"n_clusters": [2, 3]},
        scoring={"acc": accuracy_scorer, "nmi": nmi_scorer, "ari": ari_scorer},
        refit="acc",
        cv=2,
    )
    search.fit(X, y)
    assert search.best_params_ == {"n_clusters": 3}
    for key in ("acc", "nmi", "ari"):
        assert search.cv_results_[f"mean_test_{key}"][1] == pytest.approx(1.0)
    # With 2 clusters for 3 classes at most 2/3 of the samples can be matched.
    assert search.cv_results_["mean_test_acc"][0] <= 2 / 3 + 0.05
