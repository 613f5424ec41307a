"""scikit-learn's estimator checks on SpiceClustering (precomputed features, fast settings)
and ImageEmbedder is covered in test_image_embedder (its input is images, which the
generic checks do not generate).

Every expected failure is listed with its reason; the list is kept as short as the
estimator's nature allows.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from spice_learn import SpiceClustering


def fast_spice():
    return SpiceClustering(2, backbone="precomputed", n_heads=2, max_epochs=10, semi_steps=50,
                           n_weak_views=1, n_strong_views=1, random_state=0)


EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks([fast_spice()],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
