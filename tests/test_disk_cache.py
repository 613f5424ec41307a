"""cache_dir: view embeddings on disk, reused by later fits, read per minibatch."""

import os
import pickle
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from _images import random_pixels
from _nets import TinyNet

import spice_learn.view_cache as view_cache_module
from spice_learn import SpiceClustering
from spice_learn.disk_cache import DiskArray, atomic_path, fingerprint, tensor_bytes


BACKBONE = TinyNet(channels=16)


def _images(n=40, seed=0):
    return random_pixels(n, 8, channels=3, seed=seed)


def _model(**params):
    params = {"backbone": BACKBONE, "n_heads": 2, "max_epochs": 2, "n_weak_views": 2,
              "n_strong_views": 2, "embed_batch_size": 16, "semi_steps": 5, "device": "cpu",
              "random_state": 0, **params}
    return SpiceClustering(3, **params)


@pytest.fixture
def embed_calls(monkeypatch):
    calls = []
    real = view_cache_module.embed_views

    def counting(*args, **kwargs):
        calls.append(kwargs.get("out"))
        return real(*args, **kwargs)

    monkeypatch.setattr(view_cache_module, "embed_views", counting)
    return calls


def _stored(path):
    return sorted(p.name for p in Path(path).iterdir())


# ------------------------------------------------------------------ DiskArray
@pytest.fixture
def stored(tmp_path):
    values = torch.randn(3, 50, 4)
    array = DiskArray.create(tmp_path / "a.npy", values.shape, torch.float32)
    for v in range(3):
        for start in range(0, 50, 16):
            array[v, start : start + 16] = values[v, start : start + 16]
    return DiskArray.open(tmp_path / "a.npy"), values


def test_disk_array_reads_like_the_tensor(stored):
    array, values = stored
    idx = torch.tensor([7, 3, 3, 49, 0, 8])
    views = torch.tensor([2, 0, 1, 1, 0, 2])
    assert array.shape == (3, 50, 4) and array[1].shape == (50, 4)
    torch.testing.assert_close(array[1][:], values[1], rtol=0, atol=0)
    torch.testing.assert_close(array[2][10:20], values[2, 10:20], rtol=0, atol=0)
    torch.testing.assert_close(array[-1][idx], values[-1][idx], rtol=0, atol=0)
    torch.testing.assert_close(array[views, idx], values[views, idx], rtol=0, atol=0)
    torch.testing.assert_close(array[1:][views[:4].view(2, 2) % 2, idx[:4].view(2, 2)],
                               values[1:][views[:4].view(2, 2) % 2, idx[:4].view(2, 2)],
                               rtol=0, atol=0)
    torch.testing.assert_close(array[1:3][1][idx], values[2][idx], rtol=0, atol=0)


def test_disk_array_indexing_edge_cases(stored):
    array, values = stored
    # negative positions count from the end, as for a tensor
    torch.testing.assert_close(array[1][torch.tensor([-1, -50, 2])],
                               values[1][torch.tensor([-1, -50, 2])], rtol=0, atol=0)
    torch.testing.assert_close(array[torch.tensor([-1]), torch.tensor([-2])],
                               values[-1:, -2], rtol=0, atol=0)
    torch.testing.assert_close(array[-1, 3:7], values[-1, 3:7], rtol=0, atol=0)
    # empty selections read empty tensors
    assert array[0][5:5].shape == (0, 4) and array[0][10:2].shape == (0, 4)
    assert array[0][torch.zeros(0, dtype=torch.long)].shape == (0, 4)
    assert array[2:1].shape == (0, 50, 4)
    for key in (50, -51, [0, 50], torch.tensor([-51])):
        with pytest.raises(IndexError):
            array[0][key]
    with pytest.raises(IndexError):
        array[torch.tensor([3]), torch.tensor([0])]
    with pytest.raises(IndexError):
        array[3]
    for key in (torch.ones(50, dtype=torch.bool), np.ones(50, bool), True,
                torch.tensor([1.0, 2.0]), "a"):
        with pytest.raises(TypeError):
            array[0][key]
    with pytest.raises(TypeError):
        array[True]


def test_fingerprint_hashes_without_a_copy_and_sees_every_byte():
    extractor = SimpleNamespace(name="x", input_size=(4, 4), module=nn.Linear(2, 2))
    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    base = fingerprint(images, extractor)
    images[2, 2, 3, 3] = 1
    assert fingerprint(images, extractor) != base
    assert fingerprint(images.transpose(2, 3), extractor) != base
    hashed = tensor_bytes(images)  # the images' own memory, not a copy
    images[0, 0, 0, 0] = 7
    assert hashed[0] == 7 and len(hashed) == images.numel()


def test_atomic_path_gives_the_files_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_disk_array_is_a_npy_file_and_pickles_without_data(stored):
    array, values = stored
    np.testing.assert_array_equal(np.load(array.path, mmap_mode="r"), values.numpy())
    assert len(pickle.dumps(array)) < 1000


def test_disk_array_float16(tmp_path):
    values = torch.randn(1, 10, 3)
    array = DiskArray.create(tmp_path / "h.npy", values.shape, torch.float16)
    array[0, 0:10] = values[0]
    read = DiskArray.open(tmp_path / "h.npy")[0][:]
    assert read.dtype == torch.float16
    torch.testing.assert_close(read, values[0].half(), rtol=0, atol=0)


def test_atomic_path_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert _stored(tmp_path / "sub") == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete" and _stored(tmp_path / "sub") == ["file.bin"]


# ------------------------------------------------------------------ estimator
def _same_fit(a, b):
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.head_losses_, b.head_losses_)
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)
    np.testing.assert_array_equal(a.semi_history_, b.semi_history_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


def test_cache_dir_is_reused_and_gives_the_same_fit(tmp_path, embed_calls):
    X = _images()
    in_memory = _model().fit(X)
    first = _model(cache_dir=tmp_path).fit(X)
    assert len(embed_calls) == 2 and isinstance(embed_calls[1], DiskArray)
    files = _stored(tmp_path)
    assert len(files) == 1 and files[0].startswith("views-") and files[0].endswith(".npy")
    assert np.load(tmp_path / files[0]).shape == (5, 40, 16)  # 1 + 2 weak + 2 strong views
    second = _model(cache_dir=tmp_path).fit(X)
    assert len(embed_calls) == 2  # the second fit read the file
    _same_fit(first, in_memory)
    _same_fit(second, first)
    assert len(pickle.dumps(second)) < 200_000  # the fitted model holds no cache


@pytest.mark.parametrize("change", [{"random_state": 1}, {"n_strong_views": 3},
                                    {"cache_dtype": "float16"}, {"flip": False}])
def test_other_settings_use_another_file(tmp_path, embed_calls, change):
    _model(cache_dir=tmp_path).fit(_images())
    _model(cache_dir=tmp_path, **change).fit(_images())
    assert len(embed_calls) == 2 and len(_stored(tmp_path)) == 2


def test_another_embed_batch_size_uses_another_file(tmp_path, embed_calls):
    # the augmentations are seeded per block of embed_batch_size
    _model(cache_dir=tmp_path, embed_batch_size=16).fit(_images())
    _model(cache_dir=tmp_path, embed_batch_size=8).fit(_images())
    assert len(embed_calls) == 2 and len(_stored(tmp_path)) == 2


def test_cache_dir_without_random_state_warns(tmp_path):
    with pytest.warns(UserWarning, match="set random_state to reuse the cache"):
        _model(cache_dir=tmp_path, random_state=None, semi=None).fit(_images())


def test_a_cache_file_of_the_wrong_shape_is_replaced(tmp_path, embed_calls):
    X = _images()
    first = _model(cache_dir=tmp_path).fit(X)
    (name,) = _stored(tmp_path)
    np.save(tmp_path / name, np.zeros((2, 3, 4), np.float32))  # a foreign file
    with pytest.warns(UserWarning, match="embedding again and replacing it"):
        second = _model(cache_dir=tmp_path).fit(X)
    assert len(embed_calls) == 2 and _stored(tmp_path) == [name]
    _same_fit(second, first)
    _model(cache_dir=tmp_path).fit(X)  # the replaced file is read again
    assert len(embed_calls) == 2


def test_cache_dir_is_not_checked_with_precomputed_features(tmp_path):
    # A cache_dir that could never be a folder (a file is in the way) is fine: features
    # are never embedded, so nothing is cached, checked or written.
    (tmp_path / "file").write_text("x")
    features = np.random.default_rng(0).normal(size=(30, 5))
    params = dict(backbone="precomputed", max_epochs=2, semi=None, random_state=0)
    model = SpiceClustering(3, cache_dir=tmp_path / "file" / "cache", **params).fit(features)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert (tmp_path / "file").read_text() == "x"
    plain = SpiceClustering(3, **params).fit(features)  # cache_dir has no effect at all
    np.testing.assert_array_equal(model.labels_, plain.labels_)


def test_other_images_use_another_file(tmp_path, embed_calls):
    _model(cache_dir=tmp_path).fit(_images(seed=0))
    _model(cache_dir=tmp_path).fit(_images(seed=1))
    assert len(embed_calls) == 2 and len(_stored(tmp_path)) == 2


def test_interrupted_embedding_leaves_no_cache(tmp_path, monkeypatch):
    real = view_cache_module.embed_views

    def interrupted(*args, out, **kwargs):
        out[0, 0:4] = torch.zeros(4, out.shape[2])  # part of the file is written
        raise KeyboardInterrupt

    monkeypatch.setattr(view_cache_module, "embed_views", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _model(cache_dir=tmp_path).fit(_images())
    assert _stored(tmp_path) == []
    monkeypatch.setattr(view_cache_module, "embed_views", real)
    _same_fit(_model(cache_dir=tmp_path).fit(_images()), _model().fit(_images()))


def test_cache_dir_is_created(tmp_path):
    _model(cache_dir=str(tmp_path / "a" / "b"), semi=None).fit(_images())
    assert len(_stored(tmp_path / "a" / "b")) == 1


@pytest.mark.parametrize("value", [3, ["dir"], b"dir"])
def test_cache_dir_must_be_path_like(value):
    with pytest.raises(TypeError, match="cache_dir must be None or a folder path"):
        _model(cache_dir=value).fit(_images())


def test_cache_dir_under_a_file_is_refused_before_any_work(tmp_path, embed_calls):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"cache_dir=.*file.* is a file"):
        _model(cache_dir=tmp_path / "file" / "cache").fit(_images())
    assert embed_calls == []


# --------------------------------------------------------- memory of the cache
PROBE = textwrap.dedent("""
    import sys, numpy as np, torch
    from spice_learn.disk_cache import DiskArray
    from spice_learn.embedding import ViewCache
    from spice_learn.spice_self import train_heads

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def peak_growth(n, mode, path):
        store = DiskArray.create(path, (3, n, 512), torch.float32)  # 6 KiB per sample
        gen = torch.Generator().manual_seed(0)
        for v in range(3):
            for s in range(0, n, 1000):
                rows = torch.randn(min(1000, n - s), 512, generator=gen)
                store[v, s : s + len(rows)] = torch.nn.functional.normalize(rows, dim=1)
        rows = None
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) starts again from here
        views = DiskArray.open(path)
        if mode == "memory":  # the control: the whole cache in RAM
            views = torch.from_numpy(np.load(path))
        train_heads(ViewCache(views[0], views[1:2], views[2:3]), n_clusters=10, n_heads=2,
                    hidden_dim=64, batch_size=1000, minibatch_size=128, max_epochs=1,
                    learning_rate=1e-3, confidence_ratio=0.5, entropy_weight=0.0, seed=0,
                    device=torch.device("cpu"))
        return status("VmHWM") - before

    torch.set_num_threads(1)
    folder, runs = sys.argv[1], sys.argv[2:]
    for run in runs:
        mode, n = run.split(":")
        print(peak_growth(int(n), mode, f"{folder}/{run.replace(':', '-')}.npy"))
""")


def _peak_growths(folder, *runs):
    """Peak RSS growth (bytes) of reading a 3-view cache of ``n`` samples and
    training heads on it for one epoch, for each ``"mode:n"`` run, in one fresh
    process after a warm-up run (lazy initialisations of torch are not counted)."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(folder), "disk:1000", *runs],
                         capture_output=True, text=True, check=True)
    return [int(line) for line in out.stdout.split()[1:]]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_memory_of_a_disk_cache_does_not_grow_with_n(tmp_path):
    n = 3000  # the cache: 18 MiB at N, 70 MiB at 4N
    growth = _peak_growths(tmp_path, f"disk:{n}", f"disk:{4 * n}",
                           f"memory:{n}", f"memory:{4 * n}")
    # Below 10 MiB the growth is allocator noise: 0-8 MiB in repeated runs, for N
    # from 4,000 to 32,000 alike. It is counted as 10 MiB.
    floor = 10 << 20
    disk, memory = growth[:2], growth[2:]
    assert disk[1] < 1.2 * max(disk[0], floor), growth
    # The control: with the cache in memory the same check fails (52 MiB more at 4N).
    assert memory[1] > 1.2 * max(memory[0], floor) and memory[1] - memory[0] > 40 << 20, growth
