"""Clustering metrics: accuracy after Hungarian matching, NMI, ARI, and scorers.

Labels are compared only for *evaluation*. Nothing in the library uses them for
training, head selection or early stopping.
"""

from __future__ import annotations

from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    make_scorer,
    normalized_mutual_info_score,
)
from sklearn.metrics.cluster import contingency_matrix
from sklearn.utils.validation import column_or_1d

__all__ = [
    "cluster_accuracy",
    "clustering_scores",
    "accuracy_scorer",
    "nmi_scorer",
    "ari_scorer",
]


def _check_label_pair(y_true, y_pred):
    y_true = column_or_1d(y_true)
    y_pred = column_or_1d(y_pred)
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(
            f"y_true and y_pred must have the same length, got {y_true.shape[0]} "
            f"and {y_pred.shape[0]}."
        )
    if y_true.shape[0] == 0:
        raise ValueError("y_true and y_pred must not be empty.")
    return y_true, y_pred


def cluster_accuracy(y_true, y_pred):
    """Clustering accuracy under the best one-to-one cluster-to-class mapping.

    The contingency table (classes x clusters) is matched with the Hungarian
    algorithm (:func:`scipy.optimize.linear_sum_assignment`), which accepts
    rectangular tables. When there are more clusters than classes the surplus
    clusters stay unmatched and every sample in them counts as an error; when
    there are fewer clusters than classes, the unmatched classes are errors.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels (any hashable values).
    y_pred : array-like of shape (n_samples,)
        Cluster labels (any hashable values).

    Returns
    -------
    accuracy : float
        Fraction of samples whose cluster is mapped to their class, in [0, 1].

    Examples
    --------
    >>> from spice_learn.metrics import cluster_accuracy
    >>> cluster_accuracy([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> cluster_accuracy([0, 0, 0, 0], [0, 0, 1, 1])
    0.5
    """
    y_true, y_pred = _check_label_pair(y_true, y_pred)
    table = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y_true.shape[0])


def clustering_scores(y_true, y_pred):
    """ACC, NMI and ARI of a clustering against reference labels.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    scores : dict
        ``{"acc": float, "nmi": float, "ari": float}``; NMI and ARI are
        scikit-learn's :func:`~sklearn.metrics.normalized_mutual_info_score`
        (arithmetic normalisation) and :func:`~sklearn.metrics.adjusted_rand_score`.
    """
    y_true, y_pred = _check_label_pair(y_true, y_pred)
    return {
        "acc": cluster_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


#: Scorer for ``GridSearchCV(..., scoring=accuracy_scorer)``; calls ``predict``.
accuracy_scorer = make_scorer(cluster_accuracy)
#: Scorer for normalised mutual information; calls ``predict``.
nmi_scorer = make_scorer(normalized_mutual_info_score)
#: Scorer for the adjusted Rand index; calls ``predict``.
ari_scorer = make_scorer(adjusted_rand_score)
