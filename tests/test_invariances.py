"""The label-free two-sample test that chooses stage 1's optional invariances."""

import warnings

import numpy as np
import pytest
import torch

from spice_learn.invariances import (
    INVARIANT_BELOW,
    MIN_TEST_IMAGES,
    UNTESTED_COLOUR,
    detect_invariances,
)


def _nuisance_images(n=400, size=12, seed=0):
    """Squares in a random colour on a random background colour, at random places,
    turned by random quarter turns and inverted at random: every hue, polarity and
    orientation is as likely as any other."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        x[i] = rng.integers(0, 256, (3, 1, 1))
        r, c = rng.integers(0, size - 5, 2)
        x[i, :, r : r + 3 + i % 3, c : c + 5] = rng.integers(0, 256, (3, 1, 1))
        x[i] = np.rot90(x[i], rng.integers(4), axes=(1, 2))
        if rng.random() < 0.5:
            x[i] = 255 - x[i]
    return torch.from_numpy(x)


def _upright_images(n=400, size=12, seed=0, colour=True):
    """Landscapes: a light blue sky above dark green ground, with noise; as gray
    images when ``colour`` is False (a light top above a dark bottom)."""
    rng = np.random.default_rng(seed)
    sky, ground = np.array([150, 190, 250]), np.array([40, 110, 30])
    x = np.empty((n, 3, size, size))
    for i in range(n):
        horizon = rng.integers(size // 3, 2 * size // 3)
        x[i, :, :horizon] = sky[:, None, None]
        x[i, :, horizon:] = ground[:, None, None]
    x += rng.normal(0, 25, x.shape)
    if not colour:
        x[:] = x.mean(axis=1, keepdims=True)
    return torch.from_numpy(x.clip(0, 255).astype(np.uint8))


def test_images_in_every_colour_and_polarity_pass_every_test():
    test = detect_invariances(_nuisance_images(), colour=True, seed=0)
    assert test.invariances == ("hue", "polarity")
    assert set(test.scores) == {"hue", "polarity"}
    assert all(score < INVARIANT_BELOW for score in test.scores.values())


def test_upright_photos_pass_none():
    test = detect_invariances(_upright_images(), colour=True, seed=0)
    assert test.invariances == ()
    assert all(score > 0.8 for score in test.scores.values()), test.scores


def test_grayscale_images_are_not_tested_for_hue():
    test = detect_invariances(_upright_images(colour=False), colour=False, seed=0)
    assert set(test.scores) == {"polarity"} and test.invariances == ()


def test_few_images_are_not_tested_and_colour_ones_keep_the_strong_changes():
    images = _nuisance_images(n=MIN_TEST_IMAGES - 1)
    test = detect_invariances(images, colour=True, seed=0)
    assert test.invariances == UNTESTED_COLOUR == ("hue", "polarity") and test.scores == {}
    test = detect_invariances(images, colour=False, seed=0)
    assert test.invariances == () and test.scores == {}


def _skewed_textures(n=400, size=12, seed=0):
    """Gray noise with a long bright tail around a mean of 0.5 at every pixel: only
    the histogram's shape tells an inverted image (a long dark tail) apart."""
    rng = np.random.default_rng(seed)
    x = 0.5 + 0.15 * (rng.exponential(1.0, (n, 1, size, size)) - 1.0)
    x = np.repeat(x.clip(0, 1) * 255, 3, axis=1)
    return torch.from_numpy(x.round().astype(np.uint8))


def test_an_inverted_histogram_is_seen_where_every_pixel_has_the_same_mean():
    test = detect_invariances(_skewed_textures(), colour=False, seed=0)
    assert test.scores["polarity"] > 0.8 and test.invariances == ()


def test_a_stream_non_square_images_and_a_folder_give_a_result(tmp_path):
    from PIL import Image

    from spice_learn import ImageStream

    images = _nuisance_images(n=60)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"{i:03d}.png")
    from_stream = detect_invariances(ImageStream(tmp_path), colour=True, seed=0)
    assert from_stream == detect_invariances(images, colour=True, seed=0)
    wide = detect_invariances(_upright_images()[:, :, :8, :], colour=True, seed=0)
    assert set(wide.scores) == {"hue", "polarity"} and wide.invariances == ()


def test_same_seed_same_result_and_images_untouched():
    images = _nuisance_images()
    before = images.clone()
    first = detect_invariances(images, colour=True, seed=3)
    assert detect_invariances(images, colour=True, seed=3) == first
    assert torch.equal(images, before)


def test_fit_uses_the_found_invariances_and_explicit_ones_win(monkeypatch):
    import spice_learn.representation as representation
    from spice_learn import SpiceClustering

    seen = []
    real = representation.contrastive_augment

    def spy(size, **kwargs):
        seen.append(kwargs.get("invariances"))
        return real(size, **kwargs)

    monkeypatch.setattr(representation, "contrastive_augment", spy)
    images = _nuisance_images(n=120, size=12)
    common = dict(pretrain_epochs=1, n_heads=2, max_epochs=2, semi=None, random_state=0)
    model = SpiceClustering(3, **common).fit(images)
    assert model.plan_["invariances"] == ("hue", "polarity") == seen[-1]
    assert set(model.plan_["invariance_scores"]) == {"hue", "polarity"}
    model = SpiceClustering(3, invariances=["rotation"], **common).fit(images)
    assert model.plan_["invariances"] == ("rotation",) == seen[-1]
    assert model.plan_["invariance_scores"] == {}
    model = SpiceClustering(3, invariances=None, **common).fit(images)
    assert model.plan_["invariances"] == () == seen[-1]


def test_the_parameter_clones_and_precomputed_features_have_the_keys():
    from sklearn.base import clone

    from spice_learn import SpiceClustering

    model = SpiceClustering(3, invariances=["hue"])
    assert clone(model).get_params()["invariances"] == ["hue"]
    features = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    fitted = SpiceClustering(3, backbone="precomputed", n_heads=2, max_epochs=2, semi=None,
                             random_state=0).fit(features)
    assert fitted.plan_["invariances"] == () and fitted.plan_["invariance_scores"] == {}


def test_image_embedder_exposes_its_plan():
    from spice_learn import ImageEmbedder

    embedder = ImageEmbedder(pretrain_epochs=1, random_state=0).fit(_nuisance_images(n=120))
    assert embedder.plan_["invariances"] == ("hue", "polarity")
    assert embedder.plan_["input_size"] == (16, 16)
    embedder = ImageEmbedder(pretrain_epochs=1, invariances=(), random_state=0)
    assert embedder.fit(_nuisance_images(n=120)).plan_["invariances"] == ()


def test_semi_finetune_views_follow_the_plan(monkeypatch):
    import spice_learn.spice_semi as spice_semi
    from spice_learn import SpiceClustering

    calls = []
    real = spice_semi.semi_views

    def spy(size, **kwargs):
        calls.append(kwargs)
        return real(size, **kwargs)

    monkeypatch.setattr(spice_semi, "semi_views", spy)
    model = SpiceClustering(3, pretrain_epochs=1, n_heads=2, max_epochs=2, semi="finetune",
                            semi_steps=1, semi_rounds=1, semi_batch_size=4, semi_mu=1,
                            n_neighbors=3, reliability_threshold=0.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(_nuisance_images(n=120))
    assert calls and calls[-1]["colour"] is True
    assert calls[-1]["invariances"] == model.plan_["invariances"] == ("hue", "polarity")


@pytest.mark.parametrize("value", [("scale",), "hue", [3], {"hue": 1}])
def test_bad_invariances_name_the_parameter(value):
    from spice_learn import SpiceClustering

    model = SpiceClustering(3, invariances=value)
    with pytest.raises(ValueError, match="invariances"):
        model.fit(_nuisance_images(n=60))
    assert not hasattr(model, "plan_")
