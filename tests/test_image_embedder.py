"""Tests of spice_learn.ImageEmbedder (images in, embeddings out, for Pipelines)."""

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from _images import random_pixels

from spice_learn import ImageEmbedder, SpiceClustering

FAST = dict(pretrain_epochs=1, batch_size=8, device="cpu", random_state=0)


def images(n=16, size=8, seed=0):
    return random_pixels(n, size, seed=seed)


@pytest.fixture(scope="module")
def fitted():
    return ImageEmbedder(**FAST).fit(images())


def test_transform_gives_normalised_embeddings(fitted):
    Z = fitted.transform(images())
    assert Z.shape == (16, fitted.n_features_out_) and Z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
    assert fitted.backbone_.name == "spice_convnet4"  # "auto" for 8 px images
    assert len(fitted.pretrain_history_) == 1  # random weights: pretrained on X


def test_feature_names(fitted):
    names = fitted.get_feature_names_out()
    assert len(names) == fitted.n_features_out_
    assert names[0] == "imageembedder0"


def test_fit_transform_equals_fit_then_transform():
    X = images(seed=1)
    a = ImageEmbedder(**FAST).fit_transform(X)
    b = ImageEmbedder(**FAST).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)


def test_same_backbone_as_spice_clustering():
    X = images(seed=2)
    emb = ImageEmbedder(**FAST).fit(X)
    est = SpiceClustering(3, pretrain_epochs=1, n_heads=2, max_epochs=1, n_weak_views=1,
                          n_strong_views=1, semi=None, embed_batch_size=8, device="cpu",
                          random_state=0)
    est.fit(X)
    assert emb.backbone_.name == est.backbone_.name
    assert emb.n_features_out_ == est.cluster_centers_.shape[1]


def test_pipeline_embedder_scaler_clusterer():
    X = images(n=30)
    pipe = make_pipeline(
        ImageEmbedder(**FAST), StandardScaler(),
        SpiceClustering(3, backbone="precomputed", max_epochs=2, n_heads=2, semi_steps=5,
                        random_state=0))
    labels = pipe.fit_predict(X)
    assert labels.shape == (30,)
    np.testing.assert_array_equal(pipe.predict(X), pipe[-1].labels_)


def test_user_module_without_pretraining():
    module = torch.nn.Conv2d(3, 4, 3)
    emb = ImageEmbedder(module, **FAST).fit(images())
    assert len(emb.pretrain_history_) == 0 and emb.n_features_out_ == 4
    assert emb.backbone_.module is not module


def test_joblib_round_trip(fitted, tmp_path):
    path = tmp_path / "embedder.joblib"
    joblib.dump(fitted, path)
    np.testing.assert_array_equal(joblib.load(path).transform(images()), fitted.transform(images()))


def test_clone_is_unfitted(fitted):
    c = clone(fitted)
    assert not hasattr(c, "backbone_")


@pytest.mark.parametrize("bad,error,match", [
    ({"backbone": "precomputed"}, ValueError, "precomputed"),
    ({"backbone": "no_such_model_xyz"}, ValueError, "backbone"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"pretrain": "moco"}, ValueError, "pretrain"),
    ({"weights": 3}, TypeError, "weights"),
    ({"device": "tpu"}, ValueError, "device"),
])
def test_bad_parameters(bad, error, match):
    params = {**FAST, **bad}
    with pytest.raises(error, match=match):
        ImageEmbedder(**params).fit(images())


def test_transform_before_fit_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ImageEmbedder().transform(images())


def test_direct_form_images_in_labels_out_inside_a_pipeline():
    from sklearn.preprocessing import FunctionTransformer

    X = images(n=20)
    invert = FunctionTransformer(lambda x: 255 - x)  # any image-to-image step
    pipe = make_pipeline(invert, SpiceClustering(
        3, backbone=torch.nn.Conv2d(3, 4, 3), n_heads=2, max_epochs=1, n_weak_views=1,
        n_strong_views=1, semi_steps=5, embed_batch_size=8, device="cpu", random_state=0))
    labels = pipe.fit_predict(X)
    assert labels.shape == (20,)
    np.testing.assert_array_equal(pipe.predict(X), labels)


def test_compile_wraps_pretraining_and_embedding(monkeypatch):
    wrapped = []

    def spy(module, **kwargs):
        wrapped.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", spy)
    X = images()
    embedder = ImageEmbedder(compile=True, **FAST).fit(X)
    assert wrapped == ["SimCLRNet"]
    embedder.transform(X)
    assert len(wrapped) == 2
    with pytest.raises(TypeError, match="compile must be True or False"):
        ImageEmbedder(compile="yes", **FAST).fit(X)
