"""Tests for spice_learn.backbones: timm models, stems, weight files, user modules."""

import re
import socket

import pytest
import timm
import torch
from torch import nn

from spice_learn.backbones import (
    MIN_INPUT_SIZE,
    FeatureExtractor,
    build_backbone,
    load_state_dict_file,
)


def _assert_same_weights(module, state_dict):
    own = {
        k: v
        for k, v in module.state_dict().items()
        if k in state_dict or not k.endswith("num_batches_tracked")
    }
    assert set(own) <= set(state_dict)
    for key, value in own.items():
        assert torch.equal(value, state_dict[key]), key


def _forward(fe, batch=2):
    with torch.inference_mode():
        return fe.module(torch.zeros(batch, 3, *fe.input_size))


@pytest.fixture(scope="module")
def resnet18_state():
    """State dict of a timm resnet18 with a 10-class head (so it has fc.* keys)."""
    torch.manual_seed(123)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert "fc.weight" in state and state["conv1.weight"].shape[-1] == 7
    return state


@pytest.fixture(scope="module")
def cifar_resnet18_state():
    """State dict of a resnet18 with a 3x3 stride-1 conv1 (CIFAR stem)."""
    torch.manual_seed(321)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- stems


def test_small_images_get_cifar_stem():
    fe = build_backbone("resnet18", None, (16, 16))
    assert isinstance(fe, FeatureExtractor)
    assert fe.stem == "cifar"
    assert fe.name == "resnet18"
    conv1 = fe.module.conv1
    assert conv1.kernel_size == (3, 3)
    assert conv1.stride == (1, 1)
    assert conv1.padding == (1, 1)
    assert isinstance(fe.module.maxpool, nn.Identity)
    assert fe.input_size == (MIN_INPUT_SIZE, MIN_INPUT_SIZE) == (32, 32)
    assert fe.feature_dim == 512
    assert fe.mean == pytest.approx((0.485, 0.456, 0.406))
    assert fe.std == pytest.approx((0.229, 0.224, 0.225))
    assert not fe.module.training
    assert not any(p.requires_grad for p in fe.module.parameters())
    out = _forward(fe)
    assert out.shape == (2, 512)


def test_small_input_size_is_clamped_per_side():
    fe = build_backbone("resnet18", None, (48, 20))
    assert fe.stem == "cifar"
    assert fe.input_size == (48, 32)
    assert _forward(fe).shape == (2, fe.feature_dim)


def test_large_images_keep_original_stem():
    fe = build_backbone("resnet18", None, (100, 100))
    assert fe.stem == "original"
    assert fe.module.conv1.kernel_size == (7, 7)
    assert fe.module.conv1.stride == (2, 2)
    assert isinstance(fe.module.maxpool, nn.MaxPool2d)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0)
    config = timm.data.resolve_model_data_config(reference)
    assert fe.input_size == tuple(config["input_size"][1:]) == (224, 224)
    assert fe.mean == pytest.approx(config["mean"])
    assert fe.std == pytest.approx(config["std"])


def test_small_stem_false_keeps_original_stem():
    fe = build_backbone("resnet18", None, (16, 16), small_stem=False)
    assert fe.stem == "original"
    assert fe.module.conv1.kernel_size == (7, 7)
    assert fe.module.conv1.stride == (2, 2)
    assert isinstance(fe.module.maxpool, nn.MaxPool2d)
    assert fe.input_size == (32, 32)
    assert _forward(fe).shape == (2, 512)


def test_small_stem_true_on_large_images():
    fe = build_backbone("resnet18", None, (100, 100), small_stem=True)
    assert fe.stem == "cifar"
    assert fe.module.conv1.kernel_size == (3, 3)
    assert fe.input_size == (224, 224)


def test_model_without_resnet_stem_keeps_original():
    # resnet10t has a deep (Sequential) stem: nothing to adapt.
    fe = build_backbone("resnet10t", None, (16, 16))
    assert fe.stem == "original"
    assert fe.input_size == (32, 32)
    assert _forward(fe).shape == (2, fe.feature_dim)


# --------------------------------------------------------------------------- seeds


def _params(fe):
    return {k: v.clone() for k, v in fe.module.state_dict().items()}


@pytest.mark.parametrize("image_size", [(16, 16), (100, 100)])
def test_same_seed_same_weights(image_size):
    a = _params(build_backbone("resnet18", None, image_size, seed=3))
    b = _params(build_backbone("resnet18", None, image_size, seed=3))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("image_size", [(16, 16), (100, 100)])
def test_different_seed_different_weights(image_size):
    a = _params(build_backbone("resnet18", None, image_size, seed=0))
    b = _params(build_backbone("resnet18", None, image_size, seed=1))
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])
    assert not torch.equal(a["layer1.0.conv1.weight"], b["layer1.0.conv1.weight"])


def test_global_rng_state_restored():
    torch.manual_seed(2024)
    state = torch.get_rng_state()
    build_backbone("resnet18", None, (16, 16), seed=5)
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- names


def test_unknown_backbone_suggests_close_name():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet19'.*Did you mean.*'resnet18'"):
        build_backbone("resnet19", None, (16, 16))


def test_unknown_backbone_without_close_match():
    with pytest.raises(ValueError, match=r"Unknown backbone 'zzzzqqqq_xxyy'"):
        build_backbone("zzzzqqqq_xxyy", None, (16, 16))


@pytest.mark.parametrize("bad", [123, None, 1.5, ["resnet18"]])
def test_non_str_backbone_type(bad):
    with pytest.raises(TypeError, match="backbone must be a timm model name"):
        build_backbone(bad, None, (16, 16))


# --------------------------------------------------------------------------- pretrained


def _no_model_built(monkeypatch):
    """Make building any timm model fail the test (what a fast failure must avoid)."""

    def no_model(*args, **kwargs):
        raise AssertionError("build_backbone built a model before failing")

    monkeypatch.setattr(timm, "create_model", no_model)


def test_pretrained_offline_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # An empty Hugging Face cache, whatever the machine has cached.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_network(*args, **kwargs):
        raise AssertionError("build_backbone must not touch the network when offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    _no_model_built(monkeypatch)  # fails before any model is built (no waiting on a download)
    with pytest.raises(ValueError, match=r"weights='pretrained'.*not reachable") as info:
        build_backbone("resnet18", "pretrained", (16, 16))
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message
    assert re.search(r"weights='/path/to/file\.pth'", message)
    assert "weights=None" in message


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("as_str", [False, True])
def test_local_pth_weights(tmp_path, resnet18_state, as_str):
    path = tmp_path / "r18.pth"
    torch.save(resnet18_state, path)
    fe = build_backbone("resnet18", str(path) if as_str else path, (100, 100))
    assert fe.stem == "original"
    _assert_same_weights(fe.module, resnet18_state)
    assert "fc.weight" not in fe.module.state_dict()
    assert fe.feature_dim == 512


def test_local_weights_module_prefix(tmp_path, resnet18_state):
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in resnet18_state.items()}, path)
    fe = build_backbone("resnet18", path, (100, 100))
    _assert_same_weights(fe.module, resnet18_state)


@pytest.mark.parametrize("key", ["state_dict", "model", "state_dict_ema"])
def test_local_weights_wrapped(tmp_path, resnet18_state, key):
    path = tmp_path / "wrapped.pth"
    torch.save({key: resnet18_state, "epoch": 3}, path)
    fe = build_backbone("resnet18", path, (100, 100))
    _assert_same_weights(fe.module, resnet18_state)


def test_local_weights_wrapped_with_module_prefix(tmp_path, resnet18_state):
    path = tmp_path / "wrapped.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}}, path)
    fe = build_backbone("resnet18", path, (100, 100))
    _assert_same_weights(fe.module, resnet18_state)


def test_local_safetensors_weights(tmp_path, resnet18_state):
    from safetensors.torch import save_file

    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(path))
    fe = build_backbone("resnet18", path, (100, 100))
    _assert_same_weights(fe.module, resnet18_state)


@pytest.mark.parametrize("state,size,stem,kernel", [
    ("resnet18_state", 16, "stride1", 7),  # a 7x7 checkpoint on small images
    ("cifar_resnet18_state", 32, "cifar", 3),  # a CIFAR checkpoint in the CIFAR stem
])
def test_checkpoint_loads_into_a_stride1_stem(tmp_path, request, state, size, stem, kernel):
    weights = request.getfixturevalue(state)
    path = tmp_path / "weights.pth"
    torch.save(weights, path)
    fe = build_backbone("resnet18", path, (size, size))
    assert fe.stem == stem
    assert fe.module.conv1.kernel_size == (kernel, kernel)
    assert fe.module.conv1.stride == (1, 1)
    assert isinstance(fe.module.maxpool, nn.Identity)
    _assert_same_weights(fe.module, weights)
    assert _forward(fe).shape == (2, 512)


def test_cifar_checkpoint_on_large_images_is_a_clear_error(tmp_path, cifar_resnet18_state):
    path = tmp_path / "cifar.pth"
    torch.save(cifar_resnet18_state, path)
    with pytest.raises(ValueError, match=r"cifar\.pth.*other shapes.*conv1\.weight"):
        build_backbone("resnet18", path, (100, 100))


def test_missing_weights_file(tmp_path):
    path = tmp_path / "no_such_weights.pth"
    with pytest.raises(ValueError, match=r"no_such_weights\.pth.*does not exist"):
        build_backbone("resnet18", path, (16, 16))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_weights_file_not_a_checkpoint(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=rf"Cannot read weights file .*garbage{re.escape(suffix)}"):
        build_backbone("resnet18", path, (16, 16))


def test_weights_file_without_tensors(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=r"list\.pth.*does not hold a state dict of tensors"):
        load_state_dict_file(path)


def test_weights_file_with_pickled_object_is_refused(tmp_path):
    # Arbitrary pickled objects are not loaded (weights_only=True).
    path = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": _Unpicklable()}, path)
    with pytest.raises(ValueError, match=r"Cannot read weights file .*pickled\.pth"):
        load_state_dict_file(path)


class _Unpicklable:
    """A plain Python class: not in torch's weights_only allow-list."""


def test_wrong_architecture_state_dict(tmp_path):
    state = timm.create_model("resnet34", pretrained=False, num_classes=0).state_dict()
    path = tmp_path / "r34.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"r34\.pth.*does not fit backbone.*unexpected keys"):
        build_backbone("resnet18", path, (100, 100))


def test_wrong_shapes_state_dict(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"shapes\.pth.*other shapes.*layer1\.0\.conv1\.weight"):
        build_backbone("resnet18", path, (100, 100))


def test_missing_keys_state_dict(tmp_path, resnet18_state):
    state = {k: v for k, v in resnet18_state.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"partial\.pth.*missing keys"):
        build_backbone("resnet18", path, (100, 100))


def test_torch_load_called_with_weights_only(tmp_path, resnet18_state, monkeypatch):
    path = tmp_path / "r18.pth"
    torch.save(resnet18_state, path)
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    build_backbone("resnet18", path, (100, 100))
    assert len(calls) == 1
    assert calls[0].get("weights_only") is True
    assert calls[0].get("map_location") == "cpu"


def test_weights_of_wrong_type():
    with pytest.raises(TypeError, match="weights must be None, 'pretrained' or a path"):
        build_backbone("resnet18", 42, (16, 16))


# --------------------------------------------------------------------------- user modules


def _user_pooled_module():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _snapshot_module(module):
    return (
        {k: v.clone() for k, v in module.state_dict().items()},
        [m.training for m in module.modules()],
        [p.requires_grad for p in module.parameters()],
    )


def _assert_module_unchanged(module, snapshot):
    state, training, requires_grad = snapshot
    now = module.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert [m.training for m in module.modules()] == training
    assert [p.requires_grad for p in module.parameters()] == requires_grad


@pytest.mark.parametrize("train_mode", [True, False])
def test_user_module_pooled_features(train_mode):
    user = _user_pooled_module().train(train_mode)
    snapshot = _snapshot_module(user)
    fe = build_backbone(user, None, (16, 16))
    assert fe.feature_dim == 8
    assert fe.name == "Sequential"
    assert fe.stem == "original"
    assert fe.input_size == (32, 32)
    assert fe.mean == pytest.approx((0.485, 0.456, 0.406))
    assert fe.std == pytest.approx((0.229, 0.224, 0.225))
    # The user's module is copied, not modified.
    assert fe.module is not user
    assert all(m is not user for m in fe.module.modules())
    user_ptrs = {p.data_ptr() for p in user.parameters()}
    assert not any(p.data_ptr() in user_ptrs for p in fe.module.parameters())
    _assert_module_unchanged(user, snapshot)
    # The copy is frozen and its layers are in eval mode.
    assert not any(m.training for m in fe.module.module.modules())
    assert not any(p.requires_grad for p in fe.module.parameters())
    out = _forward(fe, batch=3)
    assert out.shape == (3, 8)
    _assert_module_unchanged(user, snapshot)


def test_user_module_extractor_is_in_eval_mode():
    fe = build_backbone(_user_pooled_module(), None, (16, 16))
    assert not fe.module.training


def test_user_module_returning_feature_map():
    torch.manual_seed(0)
    user = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
    snapshot = _snapshot_module(user)
    fe = build_backbone(user, None, (40, 40))
    assert fe.feature_dim == 5
    assert fe.input_size == (40, 40)
    x = torch.rand(2, 3, 40, 40)
    with torch.inference_mode():
        out = fe.module(x)
        expected = user(x).mean(dim=(2, 3))
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, expected)
    _assert_module_unchanged(user, snapshot)


def test_user_timm_module_uses_its_pretrained_cfg():
    user = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    user.pretrained_cfg = dict(user.pretrained_cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    fe = build_backbone(user, None, (16, 16))
    assert fe.mean == pytest.approx((0.5, 0.5, 0.5))
    assert fe.std == pytest.approx((0.25, 0.25, 0.25))
    assert fe.feature_dim == user.num_features
    assert user.training  # still in the user's mode


@pytest.mark.parametrize("weights", ["pretrained", "some/file.pth"])
def test_user_module_with_weights_raises(weights):
    with pytest.raises(ValueError, match="weights must be None when backbone is a torch.nn.Module"):
        build_backbone(_user_pooled_module(), weights, (16, 16))


# --------------------------------------------------------------------------- more edge cases


def test_pretrained_for_model_without_pretrained_weights(monkeypatch):
    # cspresnet50d exists in timm but has no pretrained weights; fails before building.
    _no_model_built(monkeypatch)
    with pytest.raises(ValueError, match=r"timm has no pretrained weights for backbone 'cspresnet50d'"):
        build_backbone("cspresnet50d", "pretrained", (16, 16))


def test_fixed_input_size_model_uses_config_size_for_small_images():
    fe = build_backbone("vit_tiny_patch16_224", None, (16, 16))
    assert fe.stem == "original"  # no ResNet stem to adapt
    assert fe.input_size == (224, 224)
    assert fe.feature_dim == 192


def test_state_dict_without_num_batches_tracked(tmp_path, resnet18_state):
    state = {k: v for k, v in resnet18_state.items() if not k.endswith("num_batches_tracked")}
    # torch itself accepts this with strict=True.
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10)
    reference.load_state_dict(state, strict=True)
    path = tmp_path / "legacy_torchvision.pth"
    torch.save(state, path)
    fe = build_backbone("resnet18", path, (100, 100))
    _assert_same_weights(fe.module, state)


def test_input_size_override_for_a_fixed_size_model():
    from spice_learn.backbones import build_backbone

    ext = build_backbone("spice_convnet4", None, (32, 32), input_size=(24, 24))
    assert ext.input_size == (24, 24)
    assert build_backbone("spice_convnet4", None, (32, 32)).input_size == (16, 16)
