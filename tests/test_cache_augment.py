"""Tests of spice_learn.cache_augment."""

import pytest
import torch
from torchvision.transforms import v2

from spice_learn.cache_augment import feature_views, strong_transform, weak_transform

SIZE = (32, 32)


def _gradient_image():
    """A strong left-to-right horizontal gradient, 0 .. 248."""
    return (torch.arange(32) * 8).view(1, 1, 32).expand(3, 32, 32).to(torch.uint8).contiguous()


def _reversed(out):
    out = out.float()
    return bool(out[:, :, :16].mean() > out[:, :, 16:].mean())


def _count_reversed(transform, n=300, seed=0):
    img = _gradient_image()
    torch.manual_seed(seed)
    return sum(_reversed(transform(img)) for _ in range(n))


def _all_transforms(transform):
    """Every transform inside (nested) Compose objects."""
    found = [transform]
    for inner in getattr(transform, "transforms", []):
        found.extend(_all_transforms(inner))
    return found


@pytest.mark.parametrize("make", [weak_transform, strong_transform])
@pytest.mark.parametrize("flip", [True, False])
def test_transforms_keep_shape_and_dtype(make, flip):
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    before = img.clone()
    t = make(SIZE, flip=flip)
    for _ in range(10):
        out = t(img)
        assert out.shape == (3, 32, 32)
        assert out.dtype == torch.uint8
    assert torch.equal(img, before)  # input untouched


@pytest.mark.parametrize("make", [weak_transform, strong_transform])
def test_transforms_on_non_square_images(make):
    img = torch.randint(0, 256, (3, 24, 40), dtype=torch.uint8)
    out = make((24, 40))(img)
    assert out.shape == (3, 24, 40) and out.dtype == torch.uint8


def test_transforms_are_random():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    for make in (weak_transform, strong_transform):
        t = make(SIZE)
        outs = [t(img) for _ in range(5)]
        assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_weak_without_flip_never_reverses_gradient():
    assert _count_reversed(weak_transform(SIZE, flip=False)) == 0


def test_weak_with_flip_reverses_about_half():
    count = _count_reversed(weak_transform(SIZE, flip=True))
    assert 0.35 * 300 < count < 0.65 * 300


def test_flip_false_has_no_flip_transform():
    for make in (weak_transform, strong_transform):
        kinds = [type(t) for t in _all_transforms(make(SIZE, flip=False))]
        assert v2.RandomHorizontalFlip not in kinds
        kinds = [type(t) for t in _all_transforms(make(SIZE, flip=True))]
        assert v2.RandomHorizontalFlip in kinds


def test_strong_without_flip_rarely_reverses_gradient():
    # RandAugment's Solarize (and Cutout) can change pixel values enough to swap the
    # half means now and then, but without a flip this stays far below 50 %.
    no_flip = _count_reversed(strong_transform(SIZE, flip=False))
    with_flip = _count_reversed(strong_transform(SIZE, flip=True))
    assert no_flip < 0.25 * 300
    assert with_flip > 0.35 * 300
    assert with_flip > 2 * no_flip


def test_strong_has_cutout_and_randaugment():
    kinds = [type(t) for t in _all_transforms(strong_transform(SIZE))]
    assert v2.RandAugment in kinds
    assert v2.RandomErasing in kinds
    # Cutout: a flat square of value 127 covering a quarter of the image.
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    out = strong_transform(SIZE)(img)
    assert (out == 127).all(dim=0).sum() >= 0.2 * 32 * 32


# ------------------------------------------------------------- feature views
def _features(n=500, d=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) * torch.linspace(0.5, 3.0, d) + 2.0


@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("n_views", [1, 3])
def test_feature_views_shape(strong, n_views):
    x = _features()
    before = x.clone()
    views = feature_views(x, n_views, strong=strong, generator=torch.Generator().manual_seed(0))
    assert views.shape == (n_views, *x.shape)
    assert views.dtype == x.dtype
    assert torch.equal(x, before)


def test_weak_noise_smaller_than_strong_noise():
    x = _features()
    weak = feature_views(x, 4, strong=False, generator=torch.Generator().manual_seed(0))
    strong = feature_views(x, 4, strong=True, generator=torch.Generator().manual_seed(0))
    weak_err = (weak - x).abs().mean()
    strong_err = (strong - x).abs().mean()
    assert weak_err > 0
    assert weak_err < strong_err
    # Weak: Gaussian noise of 5 % of each dimension's std.
    rel = (weak - x).std(dim=(0, 1)) / x.std(dim=0)
    torch.testing.assert_close(rel, torch.full_like(rel, 0.05), atol=0.01, rtol=0)
    # Weak views never drop dimensions.
    assert (weak == 0).float().mean() < 0.01


def test_strong_views_drop_about_a_fifth():
    x = _features()
    strong = feature_views(x, 4, strong=True, generator=torch.Generator().manual_seed(1))
    dropped = (strong == 0).float().mean().item()
    assert dropped == pytest.approx(0.2, abs=0.02)


def test_feature_views_are_deterministic_with_generator():
    x = _features()
    a = feature_views(x, 2, strong=True, generator=torch.Generator().manual_seed(5))
    b = feature_views(x, 2, strong=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    state = torch.get_rng_state()
    feature_views(x, 2, strong=False, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)


def test_former_module_names_still_import():
    import spice_learn.augment as old_views
    import spice_learn.batch_augment as old_ssl
    import spice_learn.cache_augment as views
    import spice_learn.ssl_augment as ssl

    assert old_views.feature_views is views.feature_views
    assert old_ssl.contrastive_augment is ssl.contrastive_augment
    assert set(old_views.__all__) == set(views.__all__)
