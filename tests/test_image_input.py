"""Tests for spice_learn.image_input: every accepted input form and every error."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spice_learn.image_input import (
    IMAGE_EXTENSIONS,
    as_features,
    as_images,
    list_image_files,
)

N, H, W = 2, 5, 6  # H, W deliberately not in (1, 3, 4) so channel axes are unambiguous


def _rng(seed=0):
    return np.random.default_rng(seed)


def _check_output(out, n, h, w):
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == (n, 3, h, w)
    assert out.is_contiguous()


def _check_no_sharing(X, X_before, out):
    """The input was not modified and the output is independent of it."""
    X_np = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X
    out_np = out.numpy()
    assert not np.shares_memory(out_np, X_np)
    np.testing.assert_array_equal(X_np, X_before)
    # Writing into the output must leave the input untouched.
    out_np[...] = 7
    np.testing.assert_array_equal(X_np, X_before)


def _snapshot(X):
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy().copy()
    return X.copy()


# --------------------------------------------------------------------------- arrays


def test_numpy_nhw_grayscale_repeated():
    X = _rng().integers(0, 256, size=(N, H, W), dtype=np.uint8)
    before = X.copy()
    out = as_images(X)
    _check_output(out, N, H, W)
    for c in range(3):
        np.testing.assert_array_equal(out[:, c].numpy(), X)
    _check_no_sharing(X, before, out)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_numpy_nhwc(channels):
    X = _rng(channels).integers(0, 256, size=(N, H, W, channels), dtype=np.uint8)
    before = X.copy()
    out = as_images(X)
    _check_output(out, N, H, W)
    expected = np.moveaxis(X, -1, 1)
    if channels == 1:
        expected = np.repeat(expected, 3, axis=1)
    else:
        expected = expected[:, :3]  # alpha dropped
    np.testing.assert_array_equal(out.numpy(), expected)
    _check_no_sharing(X, before, out)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_numpy_nchw(channels):
    X = _rng(10 + channels).integers(0, 256, size=(N, channels, H, W), dtype=np.uint8)
    before = X.copy()
    out = as_images(X)
    _check_output(out, N, H, W)
    expected = np.repeat(X, 3, axis=1) if channels == 1 else X[:, :3]
    np.testing.assert_array_equal(out.numpy(), expected)
    _check_no_sharing(X, before, out)


def test_numpy_ambiguous_layout_prefers_channels_last():
    # (N, 3, H, 3): both axes could be channels; numpy input is read as NHWC.
    X = _rng().integers(0, 256, size=(N, 3, 7, 3), dtype=np.uint8)
    out = as_images(X)
    _check_output(out, N, 3, 7)
    np.testing.assert_array_equal(out.numpy(), np.moveaxis(X, -1, 1))


def test_non_contiguous_view_input():
    base = _rng().integers(0, 256, size=(N, H, W, 6), dtype=np.uint8)
    X = base[..., ::2]  # non-contiguous (N, H, W, 3) view
    before_base = base.copy()
    out = as_images(X)
    _check_output(out, N, H, W)
    np.testing.assert_array_equal(out.numpy(), np.moveaxis(X, -1, 1))
    assert not np.shares_memory(out.numpy(), base)
    np.testing.assert_array_equal(base, before_base)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_unit_range_scaled_to_255(dtype):
    X = np.zeros((N, H, W, 3), dtype=dtype)
    X[0, 0, 0] = [1.0, 0.0, 0.2]
    X[1, 1, 1] = [0.6, 0.4, 1.0]
    before = X.copy()
    out = as_images(X)
    _check_output(out, N, H, W)
    got = out.numpy()
    np.testing.assert_array_equal(got[0, :, 0, 0], [255, 0, 51])
    np.testing.assert_array_equal(got[1, :, 1, 1], [153, 102, 255])
    assert got.sum() == 255 + 51 + 153 + 102 + 255
    _check_no_sharing(X, before, out)


def test_float_all_ones_gives_255():
    X = np.ones((N, H, W), dtype=np.float32)
    out = as_images(X)
    assert (out == 255).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_255_range_kept(dtype):
    X = np.zeros((N, 3, H, W), dtype=dtype)
    X[0, 0, 0, 0] = 255.0
    X[0, 1, 0, 0] = 2.0
    X[1, 2, 3, 4] = 100.4
    X[1, 0, 3, 4] = 254.6
    before = X.copy()
    out = as_images(X)
    _check_output(out, N, H, W)
    got = out.numpy()
    assert got[0, 0, 0, 0] == 255
    assert got[0, 1, 0, 0] == 2  # not scaled by 255 because max > 1
    assert got[1, 2, 3, 4] == 100
    assert got[1, 0, 3, 4] == 255
    _check_no_sharing(X, before, out)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32])
def test_other_integer_dtypes(dtype):
    hi = 127 if dtype == np.int8 else 255
    X = _rng().integers(0, hi + 1, size=(N, H, W, 3)).astype(dtype)
    X[0, 0, 0, 0] = hi
    before = X.copy()
    out = as_images(X)
    _check_output(out, N, H, W)
    np.testing.assert_array_equal(out.numpy(), np.moveaxis(X, -1, 1).astype(np.uint8))
    _check_no_sharing(X, before, out)


def test_torch_nchw_uint8():
    X = torch.randint(0, 256, (N, 3, H, W), dtype=torch.uint8)
    before = _snapshot(X)
    out = as_images(X)
    _check_output(out, N, H, W)
    np.testing.assert_array_equal(out.numpy(), before)
    _check_no_sharing(X, before, out)


def test_torch_nhwc_float():
    X = torch.rand(N, H, W, 3)
    before = _snapshot(X)
    out = as_images(X)
    _check_output(out, N, H, W)
    expected = np.clip(np.rint(np.moveaxis(before, -1, 1).astype(np.float64) * 255), 0, 255)
    np.testing.assert_array_equal(out.numpy(), expected.astype(np.uint8))
    _check_no_sharing(X, before, out)


def test_torch_float16_tensor():
    X = torch.rand(N, 3, H, W).half()
    out = as_images(X)
    _check_output(out, N, H, W)
    expected = np.rint(X.float().numpy().astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_torch_bfloat16_tensor():
    X = torch.rand(N, 3, H, W).to(torch.bfloat16)
    out = as_images(X)
    _check_output(out, N, H, W)
    np.testing.assert_array_equal(out.numpy(), as_images(X.float()).numpy())


def test_torch_ambiguous_layout_prefers_channels_first():
    # (N, 3, H, 3) as a torch tensor is read as NCHW.
    X = torch.randint(0, 256, (N, 3, 7, 3), dtype=torch.uint8)
    out = as_images(X)
    _check_output(out, N, 7, 3)
    np.testing.assert_array_equal(out.numpy(), X.numpy())


def test_torch_tensor_requiring_grad():
    X = torch.rand(N, 1, H, W, requires_grad=True)
    out = as_images(X)
    _check_output(out, N, H, W)
    assert not out.requires_grad


def test_torch_nhw_grayscale():
    X = torch.randint(0, 256, (N, H, W), dtype=torch.int64)
    out = as_images(X)
    _check_output(out, N, H, W)
    for c in range(3):
        np.testing.assert_array_equal(out[:, c].numpy(), X.numpy())


# --------------------------------------------------------------------------- PIL


def _solid(mode, size, value):
    return Image.new(mode, size, value)


def test_pil_list_rgb_values():
    imgs = [_solid("RGB", (W, H), (10, 20, 30)), _solid("RGB", (W, H), (200, 100, 0))]
    out = as_images(imgs)
    _check_output(out, 2, H, W)  # PIL size is (width, height)
    assert (out[0, 0] == 10).all() and (out[0, 1] == 20).all() and (out[0, 2] == 30).all()
    assert (out[1, 0] == 200).all() and (out[1, 1] == 100).all() and (out[1, 2] == 0).all()


def test_pil_tuple_accepted():
    imgs = (_solid("RGB", (W, H), (1, 2, 3)),)
    out = as_images(imgs)
    _check_output(out, 1, H, W)


def test_pil_grayscale_and_rgba_modes():
    imgs = [
        _solid("L", (W, H), 77),
        _solid("RGBA", (W, H), (5, 6, 7, 128)),
        _solid("RGB", (W, H), (9, 9, 9)),
    ]
    modes_before = [img.mode for img in imgs]
    out = as_images(imgs)
    _check_output(out, 3, H, W)
    assert (out[0] == 77).all()  # grayscale repeated to 3 channels
    np.testing.assert_array_equal(out[1, :, 0, 0].numpy(), [5, 6, 7])  # alpha dropped
    assert [img.mode for img in imgs] == modes_before  # the user's images are untouched


def test_pil_palette_mode():
    img = _solid("RGB", (W, H), (40, 50, 60)).convert("P", palette=Image.Palette.ADAPTIVE)
    out = as_images([img])
    _check_output(out, 1, H, W)
    np.testing.assert_array_equal(out[0, :, 0, 0].numpy(), [40, 50, 60])
    assert img.mode == "P"


def test_pil_different_sizes_resized_to_most_common():
    imgs = [
        _solid("RGB", (8, 6), (10, 10, 10)),
        _solid("RGB", (12, 10), (200, 200, 200)),  # odd one out
        _solid("RGB", (8, 6), (20, 20, 20)),
    ]
    sizes_before = [img.size for img in imgs]
    out = as_images(imgs)
    _check_output(out, 3, 6, 8)
    assert (out[1] == 200).all()  # a solid colour stays solid after resizing
    assert [img.size for img in imgs] == sizes_before


def test_pil_size_tie_goes_to_larger():
    imgs = [_solid("RGB", (8, 6), (0, 0, 0)), _solid("RGB", (12, 10), (0, 0, 0))]
    out = as_images(imgs)
    _check_output(out, 2, 10, 12)


# --------------------------------------------------------------------------- files


def _write(path, color, size=(W, H), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "images"
    files = [
        _write(root / "a.png", (255, 0, 0)),
        _write(root / "sub" / "b.png", (0, 255, 0)),
        _write(root / "sub" / "deeper" / "c.jpg", (0, 0, 255)),
        _write(root / "sub" / "deeper" / "d.JPEG", (128, 128, 128), fmt="JPEG"),
    ]
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "readme.txt").write_text("also not an image")
    (root / "sub" / "data.npy").write_bytes(b"\x93NUMPY")
    return root, files


@pytest.mark.parametrize("second,as_path", [
    ("y.png", str),  # str paths
    ("y.bmp", Path),  # a pathlib path beside a str one, another format
])
def test_list_of_paths(tmp_path, second, as_path):
    p1 = _write(tmp_path / "x.png", (1, 2, 3))
    p2 = _write(tmp_path / second, (4, 5, 6))
    out = as_images([str(p1), as_path(p2)])
    _check_output(out, 2, H, W)
    np.testing.assert_array_equal(out[0, :, 0, 0].numpy(), [1, 2, 3])
    np.testing.assert_array_equal(out[1, :, 0, 0].numpy(), [4, 5, 6])


def test_grayscale_png_file_repeated(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (W, H), 99).save(p)
    out = as_images([p])
    _check_output(out, 1, H, W)
    assert (out == 99).all()


def test_jpeg_file(tmp_path):
    p = _write(tmp_path / "photo.jpg", (120, 60, 30))
    out = as_images([p])
    _check_output(out, 1, H, W)
    # JPEG is lossy: only approximately equal.
    assert np.abs(out[0, :, 0, 0].numpy().astype(int) - [120, 60, 30]).max() <= 8


def test_files_of_different_sizes(tmp_path):
    paths = [
        _write(tmp_path / "a.png", (1, 1, 1), size=(10, 4)),
        _write(tmp_path / "b.png", (2, 2, 2), size=(7, 9)),
        _write(tmp_path / "c.png", (3, 3, 3), size=(10, 4)),
    ]
    out = as_images(paths)
    _check_output(out, 3, 4, 10)


@pytest.mark.parametrize("as_path", [False, True])
def test_directory_recursive_ignores_non_images(image_tree, as_path):
    root, files = image_tree
    out = as_images(root if as_path else str(root))
    _check_output(out, len(files), H, W)
    listed = list_image_files(root)
    assert sorted(listed) == listed
    assert set(listed) == set(files)
    assert all(p.suffix.lower() in IMAGE_EXTENSIONS for p in listed)
    # The output order follows list_image_files; PNGs are lossless.
    colors = {files[0]: (255, 0, 0), files[1]: (0, 255, 0)}
    for i, p in enumerate(listed):
        if p in colors:
            np.testing.assert_array_equal(out[i, :, 0, 0].numpy(), colors[p])


def test_directory_with_mixed_sizes(tmp_path):
    _write(tmp_path / "a.png", (0, 0, 0), size=(8, 8))
    _write(tmp_path / "s" / "b.png", (0, 0, 0), size=(8, 8))
    _write(tmp_path / "s" / "c.png", (0, 0, 0), size=(5, 3))
    out = as_images(tmp_path)
    _check_output(out, 3, 8, 8)


# --------------------------------------------------------------------------- as_features


def test_as_features_float32_copy():
    X = _rng().normal(size=(4, 3)).astype(np.float32)
    before = X.copy()
    F = as_features(X)
    assert F.dtype == np.float32 and F.shape == (4, 3) and F.ndim == 2
    assert not np.shares_memory(F, X)
    F[...] = 0
    np.testing.assert_array_equal(X, before)


def test_as_features_float64_and_list_and_int():
    X = _rng().normal(size=(5, 2))
    F = as_features(X)
    assert F.dtype == np.float32
    np.testing.assert_allclose(F, X.astype(np.float32))
    assert not np.shares_memory(F, X)
    F2 = as_features([[1, 2], [3, 4]])
    assert F2.dtype == np.float32
    np.testing.assert_array_equal(F2, [[1, 2], [3, 4]])


def test_as_features_torch():
    X = torch.randn(3, 4)
    before = X.clone()
    F = as_features(X)
    assert isinstance(F, np.ndarray) and F.dtype == np.float32 and F.shape == (3, 4)
    assert not np.shares_memory(F, X.numpy())
    F[...] = 0
    assert torch.equal(X, before)


def test_as_features_bfloat16_torch():
    X = torch.randn(3, 4).to(torch.bfloat16)
    F = as_features(X)
    assert F.dtype == np.float32
    np.testing.assert_array_equal(F, X.float().numpy())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_as_features_rejects_non_finite(bad):
    X = np.ones((3, 2), dtype=np.float32)
    X[1, 1] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        as_features(X)


def test_as_features_rejects_wrong_dims_and_empty():
    with pytest.raises(ValueError, match="2D array"):
        as_features(np.ones(5))
    with pytest.raises(ValueError, match="dim 3"):
        as_features(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="0 sample"):
        as_features(np.ones((0, 3)))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(0, H, W), (0, H, W, 3), (0, 3, H, W)])
def test_empty_array(shape):
    with pytest.raises(ValueError, match="X is empty"):
        as_images(np.zeros(shape, dtype=np.uint8))


def test_empty_torch_tensor():
    with pytest.raises(ValueError, match="X is empty"):
        as_images(torch.zeros(0, 3, H, W))


@pytest.mark.parametrize("empty", [[], ()])
def test_empty_list(empty):
    with pytest.raises(ValueError, match="X is empty.*0 images"):
        as_images(empty)


def test_2d_array_suggests_precomputed():
    with pytest.raises(ValueError, match=r"ndim=2.*backbone='precomputed'"):
        as_images(np.zeros((4, 8), dtype=np.float32))


def test_5d_array():
    with pytest.raises(ValueError, match="ndim=5") as info:
        as_images(np.zeros((2, 3, 4, 4, 3), dtype=np.uint8))
    assert "precomputed" not in str(info.value)


def test_1d_array():
    with pytest.raises(ValueError, match="ndim=1"):
        as_images(np.zeros(5, dtype=np.uint8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_images(bad):
    X = np.zeros((N, H, W, 3), dtype=np.float32)
    X[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        as_images(X)


def test_non_finite_torch_images():
    X = torch.zeros(N, 3, H, W)
    X[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinity"):
        as_images(X)


def test_negative_float_images():
    X = np.full((N, H, W), 0.5, dtype=np.float32)
    X[0, 0, 0] = -0.1
    with pytest.raises(ValueError, match=r"Float images must have values in \[0, 1\] or \[0, 255\]"):
        as_images(X)


def test_float_images_above_255():
    X = np.full((N, H, W), 10.0)
    X[0, 0, 0] = 256.0
    with pytest.raises(ValueError, match=r"Float images must have values in .*256"):
        as_images(X)


@pytest.mark.parametrize("value,dtype", [(256, np.int32), (300, np.uint16), (-1, np.int16)])
def test_out_of_range_integer_images(value, dtype):
    X = np.zeros((N, H, W, 3), dtype=dtype)
    X[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=r"Integer images must have values in \[0, 255\]"):
        as_images(X)


def test_4d_without_channel_axis():
    with pytest.raises(ValueError, match="Cannot find the channel axis"):
        as_images(np.zeros((N, 5, 6, 7), dtype=np.uint8))


def test_4d_torch_without_channel_axis():
    with pytest.raises(ValueError, match="Cannot find the channel axis"):
        as_images(torch.zeros(N, 2, 6, 7))


def test_zero_height_images():
    with pytest.raises(ValueError, match="positive height and width"):
        as_images(np.zeros((N, 3, 0, 4), dtype=np.uint8))


def test_object_array():
    X = np.empty((N, H, W), dtype=object)
    X[...] = 1
    with pytest.raises(TypeError, match="must hold numbers.*object"):
        as_images(X)


def test_string_array():
    X = np.full((N, H, W), "a")
    with pytest.raises(TypeError, match="must hold numbers"):
        as_images(X)


def test_complex_array():
    X = np.zeros((N, H, W), dtype=np.complex64)
    with pytest.raises(TypeError, match="real numbers.*complex"):
        as_images(X)


def test_bool_array():
    with pytest.raises(TypeError, match="real numbers.*bool"):
        as_images(np.zeros((N, H, W), dtype=bool))


def test_mixed_list(tmp_path):
    p = _write(tmp_path / "a.png", (0, 0, 0))
    with pytest.raises(TypeError, match="only PIL images or only file paths.*Image.*str"):
        as_images([Image.new("RGB", (W, H)), str(p)])


def test_list_of_arrays_rejected():
    with pytest.raises(TypeError, match="only PIL images or only file paths.*ndarray"):
        as_images([np.zeros((H, W, 3), dtype=np.uint8)])


@pytest.mark.parametrize("bad", [42, {"a": 1}, None])
def test_unsupported_container(bad):
    with pytest.raises(TypeError, match="X must be a numpy array"):
        as_images(bad)


def test_missing_file(tmp_path):
    good = _write(tmp_path / "a.png", (0, 0, 0))
    missing = tmp_path / "nope_missing.png"
    with pytest.raises(ValueError, match=r"Image file not found.*nope_missing\.png"):
        as_images([good, missing])


def test_corrupt_image_file(tmp_path):
    bad = tmp_path / "corrupt_file.png"
    bad.write_bytes(b"these bytes are definitely not a PNG image")
    with pytest.raises(ValueError, match=r"Cannot read image file .*corrupt_file\.png"):
        as_images([bad])


def test_corrupt_image_in_directory(tmp_path):
    _write(tmp_path / "good.png", (0, 0, 0))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.jpg").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"Cannot read image file .*broken\.jpg"):
        as_images(tmp_path)


def test_truncated_image_file(tmp_path):
    p = _write(tmp_path / "trunc.png", (1, 2, 3), size=(32, 32))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Cannot read image file .*trunc\.png"):
        as_images([p])


def test_non_image_file_in_explicit_list(tmp_path):
    good = _write(tmp_path / "a.png", (0, 0, 0))
    txt = tmp_path / "notes.txt"
    txt.write_text("hello, I am text")
    with pytest.raises(ValueError, match=r"Cannot read image file .*notes\.txt"):
        as_images([str(good), str(txt)])


def test_directory_without_images(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match=re.escape(repr(str(tmp_path))) + " contains no image files"):
        as_images(tmp_path)


def test_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="contains no image files"):
        as_images(str(tmp_path))


def test_non_directory_string(tmp_path):
    with pytest.raises(ValueError, match=r"not a directory.*list of image file paths"):
        as_images(str(tmp_path / "does_not_exist"))


def test_single_image_file_path_is_not_a_directory(tmp_path):
    p = _write(tmp_path / "single.png", (0, 0, 0))
    with pytest.raises(ValueError, match=r"single\.png.*is not a directory"):
        as_images(p)


def test_list_image_files_on_file(tmp_path):
    p = _write(tmp_path / "single.png", (0, 0, 0))
    with pytest.raises(ValueError, match="is not a directory"):
        list_image_files(p)
