"""Per-sample batch augmentation used by pretraining."""

import dataclasses

import pytest
import torch

from spice_learn.ssl_augment import BatchAugment, contrastive_augment


def _batch(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=g)


@pytest.mark.parametrize("size", [(16, 16), (32, 32), (12, 20)])
def test_shape_and_range(size):
    out = contrastive_augment(size)(_batch(size=max(size)), torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, *size)
    assert out.min() >= 0 and out.max() <= 1


def test_each_sample_gets_its_own_parameters():
    same = _batch(n=1).expand(8, -1, -1, -1).contiguous()
    out = contrastive_augment((32, 32))(same, torch.Generator().manual_seed(0))
    diffs = [(out[0] - out[i]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3


def test_deterministic_for_a_seeded_generator():
    aug = contrastive_augment((16, 16))
    a = aug(_batch(), torch.Generator().manual_seed(5))
    b = aug(_batch(), torch.Generator().manual_seed(5))
    c = aug(_batch(), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_identity_settings_reproduce_the_input():
    identity = BatchAugment((16, 16), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                            brightness=0, contrast=0, saturation=0, grayscale_p=0)
    x = _batch()
    torch.testing.assert_close(identity(x, torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)


def test_flip_only_mirrors():
    flip = BatchAugment((16, 16), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True,
                        brightness=0, contrast=0, saturation=0, grayscale_p=0)
    x = _batch(n=32)
    out = flip(x, torch.Generator().manual_seed(0))
    mirrored = torch.isclose(out, x.flip(-1), atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    assert (mirrored | kept).all() and mirrored.any() and kept.any()


def test_grayscale_makes_channels_equal():
    gray = BatchAugment((16, 16), crop_scale=(1.0, 1.0), flip=False, brightness=0, contrast=0,
                        saturation=0, grayscale_p=1.0)
    out = gray(_batch(), torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_cutout_blanks_a_square():
    cut = BatchAugment((16, 16), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                       brightness=0, contrast=0, saturation=0, grayscale_p=0, cutout_p=1.0,
                       cutout_size=0.5)
    out = cut(torch.ones(4, 3, 16, 16), torch.Generator().manual_seed(0))
    zero_share = (out == 0).float().mean(dim=(1, 2, 3))
    assert ((zero_share > 0.05) & (zero_share <= 0.26)).all()


def test_recipes_depend_on_size():
    small, large = contrastive_augment((16, 16)), contrastive_augment((32, 32))
    assert not small.flip and small.padding_mode == "zeros" and small.grayscale_p == 0
    assert large.flip and large.crop_scale == (0.2, 1.0) and large.grayscale_p == 0.2
    assert not contrastive_augment((32, 32), flip=False).flip


def test_hue_rotation_keeps_the_gray_level_and_changes_colour():
    from spice_learn.ssl_augment import _luma, _rotate_hue

    x = torch.rand(6, 3, 5, 5)
    turned = _rotate_hue(x, torch.full((6,), 2.0))
    torch.testing.assert_close(_luma(turned), _luma(x), atol=1e-5, rtol=1e-5)
    assert (turned - x).abs().mean() > 0.05
    torch.testing.assert_close(_rotate_hue(x, torch.zeros(6)), x, atol=1e-5, rtol=1e-5)


def test_inversion_probability():
    x = torch.full((400, 3, 4, 4), 0.2)
    aug = BatchAugment((4, 4), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                       brightness=0.0, contrast=0.0, saturation=0.0, jitter_p=0.0,
                       grayscale_p=0.0, invert_p=0.5)
    out = aug(x, torch.Generator().manual_seed(0))
    inverted = (out.mean(dim=(1, 2, 3)) > 0.5).float().mean().item()
    assert 0.4 < inverted < 0.6
    none = BatchAugment((4, 4), crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                        grayscale_p=0.0, jitter_p=0.0)(x, torch.Generator().manual_seed(0))
    assert (none.mean(dim=(1, 2, 3)) < 0.5).all()


def test_colour_recipe_follows_the_invariances():
    from spice_learn.ssl_augment import contrastive_augment

    nuisance = contrastive_augment((16, 16), flip=True, colour=True,
                                   invariances=("hue", "polarity"))
    assert nuisance.hue == 0.5 and nuisance.invert_p == 0.5 and nuisance.grayscale_p == 0.5
    photos = contrastive_augment((16, 16), flip=True, colour=True)
    assert photos.hue == 0.1 and photos.invert_p == 0 and photos.grayscale_p == 0.2
    assert photos.saturation == 0.4 and photos.rotation == 0
    gray = contrastive_augment((16, 16), flip=True, colour=False)
    assert gray.hue == 0 and gray.invert_p == 0 and gray.saturation == 0 and gray.rotation == 15
    assert contrastive_augment((16, 16)) == gray  # colour=None: by size, as before


@pytest.mark.parametrize("colour", [True, False, None])
@pytest.mark.parametrize("size", [(16, 16), (32, 32)])
def test_rotation_and_polarity_add_to_every_recipe(colour, size):
    from spice_learn.ssl_augment import contrastive_augment

    plain = contrastive_augment(size, colour=colour)
    extra = contrastive_augment(size, colour=colour, invariances=["rotation", "polarity"])
    assert extra.rotation == 180 and extra.invert_p == 0.5
    assert plain.rotation < 180 and plain.invert_p == 0
    # nothing else changes
    assert extra == dataclasses.replace(plain, rotation=180.0, invert_p=0.5)


def test_recipe_rejects_unknown_invariances():
    from spice_learn.ssl_augment import contrastive_augment

    with pytest.raises(ValueError, match="invariances"):
        contrastive_augment((16, 16), invariances=("scale",))


def test_semi_strong_view_repeats_the_stage1_recipe():
    from spice_learn.ssl_augment import contrastive_augment, semi_views

    _, strong = semi_views((24, 24), flip=True, colour=True, invariances=("hue",))
    assert strong == contrastive_augment((24, 24), flip=True, colour=True, invariances=("hue",))


def test_without_a_generator_draws_from_the_global_rng():
    augment = contrastive_augment([12, 12], flip=True, colour=True)
    x = torch.rand(4, 3, 12, 12)
    torch.manual_seed(0)
    a = augment(x, None)
    torch.manual_seed(0)
    assert torch.equal(a, augment(x, None)) and a.shape == (4, 3, 12, 12)
