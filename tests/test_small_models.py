"""The small conv net registered with timm for tiny images."""

import pytest
import timm
import torch

import spice_learn  # noqa: F401  (registers the model)
from spice_learn.backbones import build_backbone


def test_registered_with_timm_and_gives_features():
    model = timm.create_model("spice_convnet4", num_classes=0)
    assert model.num_features == 256
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 256)


def test_classifier_head():
    model = timm.create_model("spice_convnet4", num_classes=10)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    model.reset_classifier(0)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 256)


def test_no_pretrained_weights():
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_backbone("spice_convnet4", "pretrained", (16, 16))


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (40, 40)])
def test_images_are_resized_to_16_px(size):
    extractor = build_backbone("spice_convnet4", None, size)
    assert extractor.input_size == (16, 16) and extractor.feature_dim == 256
