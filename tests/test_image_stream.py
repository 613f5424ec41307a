"""ImageStream: images read on demand, equal to the loaded ones wherever they are used."""

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _images import random_pixels
from _nets import TinyNet
from PIL import Image
from torch import nn

from spice_learn import ImageStream, SpiceClustering
from spice_learn.cache_augment import strong_transform, weak_transform
from spice_learn.backbones import build_backbone
from spice_learn.disk_cache import fingerprint, hash_images
from spice_learn.embedding import embed_views
from spice_learn.image_input import as_images
from spice_learn.image_stream import image_batches
from spice_learn.plotting import plot_cluster_grid
from spice_learn.pretrain import pretrain_simclr


class Pairs(torch.utils.data.Dataset):
    """(image, target) items like a torchvision dataset; counts the reads."""

    def __init__(self, images, kind="hwc"):
        self.images, self.kind, self.reads = images, kind, []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads.append(i)
        image = self.images[i]
        if self.kind == "pil":
            image = Image.fromarray(image)
        elif self.kind == "chw":
            image = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        return image, 7


def _pixels(n=24, size=8, seed=0):
    return random_pixels(n, size, channels=3, seed=seed)


def _folder(tmp_path, pixels):
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(tmp_path / f"img{i:03d}.png")
    return tmp_path


@pytest.mark.parametrize("kind", ["hwc", "pil", "chw"])
def test_stream_of_a_dataset_equals_the_loaded_images(kind):
    pixels = _pixels()
    stream = ImageStream(Pairs(pixels, kind))
    loaded = as_images(pixels)
    assert len(stream) == 24 and stream.shape == loaded.shape and stream.dtype == torch.uint8
    assert torch.equal(stream[:], loaded)
    assert torch.equal(stream[3], loaded[3])
    idx = torch.tensor([5, 0, 23, 5])
    assert torch.equal(stream[idx], loaded[idx])
    assert torch.equal(stream[np.arange(24) % 2 == 1], loaded[1::2])


def test_stream_of_files_equals_the_loaded_directory(tmp_path):
    folder = _folder(tmp_path, _pixels(10))
    stream = ImageStream(folder)
    assert len(stream.files) == 10
    assert torch.equal(stream[:], as_images(folder))
    listed = ImageStream([str(p) for p in stream.files[::-1]])
    assert torch.equal(listed[:], as_images(folder).flip(0))


def test_as_images_streams_a_dataset_without_reading_it():
    data = Pairs(_pixels())
    images = as_images(data)
    assert isinstance(images, ImageStream)
    assert data.reads == [0]  # the first image, for the size
    assert as_images(images) is images


def test_size_resizes_every_image_and_defaults_to_the_first():
    pixels = [np.full((8, 8, 3), 10, np.uint8), np.full((12, 6, 3), 200, np.uint8)]
    stream = ImageStream(pixels)
    assert stream.shape == (2, 3, 8, 8)
    assert stream[1].shape == (3, 8, 8) and int(stream[1].float().mean()) == 200
    assert ImageStream(pixels, size=(4, 6)).shape == (2, 3, 4, 6)
    assert ImageStream(pixels, size=5)[0].shape == (3, 5, 5)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_through_a_dataloader_equal_indexing(num_workers):
    pixels = _pixels()
    stream = ImageStream(Pairs(pixels), num_workers=num_workers)
    plan = [slice(0, 10), [3, 1, 2], torch.tensor([23]), slice(20, 24)]
    got = list(stream.batches(plan))
    loaded = as_images(pixels)
    assert len(got) == 4
    for batch, idx in zip(got, plan):
        assert torch.equal(batch, loaded[idx])
    same = list(image_batches(loaded, plan))
    assert all(torch.equal(a, b) for a, b in zip(got, same))


def test_bad_streams_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="source is empty"):
        ImageStream([])
    with pytest.raises(TypeError, match="source must be"):
        ImageStream(42)
    with pytest.raises(ValueError, match="not a directory"):
        ImageStream(tmp_path / "missing")
    with pytest.raises(ValueError, match="size must be"):
        ImageStream(_pixels(), size=(0, 4))
    with pytest.raises(ValueError, match="size must be"):
        ImageStream(_pixels(), size=True)
    with pytest.raises(ValueError, match="num_workers"):
        ImageStream(_pixels(), num_workers=-1)
    with pytest.raises(TypeError, match="item 0 of the dataset is a dict"):
        ImageStream([{"a": 1}])
    with pytest.raises(ValueError, match="item 1 of the dataset.*Float images"):
        ImageStream([np.zeros((4, 4)), np.full((4, 4), 300.0)])[1]
    with pytest.raises(IndexError, match="out of range"):
        ImageStream(_pixels(3))[3]
    with pytest.raises(IndexError, match="1-D array"):
        ImageStream(_pixels(3))[np.zeros((2, 2), int)]
    good = _folder(tmp_path, _pixels(2))
    (good / "img001.png").write_bytes(b"not an image")
    stream = ImageStream(good)  # the first image is fine; the broken one fails when read
    with pytest.raises(ValueError, match="img001.png"):
        stream[:]


def test_the_source_is_not_modified():
    pixels = _pixels()
    before = pixels.copy()
    stream = ImageStream(pixels)
    batch = stream[:4]
    batch += 1
    assert np.array_equal(pixels, before) and torch.equal(stream[:4], as_images(before[:4]))


def test_digest_of_files_follows_their_content(tmp_path):
    folder = _folder(tmp_path, _pixels(3))
    extractor = build_backbone(TinyNet(), None, (8, 8))
    first = fingerprint(ImageStream(folder), extractor, 1)
    assert fingerprint(ImageStream(folder), extractor, 1) == first
    Image.fromarray(_pixels(1, seed=9)[0]).save(folder / "img002.png")
    assert fingerprint(ImageStream(folder), extractor, 1) != first
    # A dataset is identified by its decoded images: equal images, equal digest.
    a, b = hashlib.sha256(), hashlib.sha256()
    hash_images(a, ImageStream(Pairs(_pixels())))
    hash_images(b, ImageStream(Pairs(_pixels(), "pil")))
    assert a.hexdigest() == b.hexdigest()


def test_embed_views_of_a_stream_equals_the_loaded_images():
    pixels = _pixels(40)
    extractor = build_backbone(TinyNet(), None, (8, 8))
    transforms = [None, weak_transform((8, 8), flip=True), strong_transform((8, 8), flip=True)]
    kwargs = dict(batch_size=16, device=torch.device("cpu"), seed=3)
    loaded = embed_views(extractor, as_images(pixels), transforms, **kwargs)
    streamed = embed_views(extractor, ImageStream(Pairs(pixels), num_workers=1), transforms,
                           **kwargs)
    assert torch.equal(loaded, streamed)


def test_pretraining_on_a_stream_equals_the_loaded_images():
    pixels = _pixels(32)
    kwargs = dict(max_epochs=2, max_time=None, batch_size=8, learning_rate=1e-3,
                  temperature=0.5, projection_dim=8, flip=True, seed=0,
                  device=torch.device("cpu"), verbose=0, checkpoint_dir=None)
    a = build_backbone(TinyNet(), None, (8, 8))
    b = build_backbone(TinyNet(), None, (8, 8))
    b.module.load_state_dict(a.module.state_dict())
    loaded = pretrain_simclr(a, as_images(pixels), **kwargs)
    streamed = pretrain_simclr(b, ImageStream(Pairs(pixels)), **kwargs)
    assert loaded == pytest.approx(streamed, abs=1e-6)
    for p, q in zip(a.module.parameters(), b.module.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_spice_clustering_fits_and_predicts_a_stream(tmp_path):
    pixels = _pixels(30)
    params = dict(backbone=TinyNet(), n_heads=2, max_epochs=2, n_weak_views=1,
                  n_strong_views=1, embed_batch_size=8, semi_steps=5, pretrain_epochs=1,
                  device="cpu", random_state=0)
    loaded = SpiceClustering(3, **params).fit(pixels)
    streamed = SpiceClustering(3, cache_dir=tmp_path, **params).fit(Pairs(pixels))
    np.testing.assert_array_equal(loaded.labels_, streamed.labels_)
    np.testing.assert_array_equal(streamed.predict(ImageStream(pixels)), loaded.predict(pixels))
    assert len(list(tmp_path.glob("views-*.npy"))) == 1
    plot_cluster_grid(ImageStream(pixels), loaded.labels_, np.ones(30), n_per_cluster=2)


PROBE = textwrap.dedent("""
    import sys, numpy as np, torch
    from torch import nn
    from spice_learn import ImageStream
    from spice_learn.backbones import build_backbone
    from spice_learn.embedding import embed_images
    from spice_learn.image_input import as_images

    class Generated(torch.utils.data.Dataset):  # 64 px images made when read
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            return np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    torch.set_num_threads(1)
    extractor = build_backbone(nn.Conv2d(3, 4, 3, stride=4), None, (64, 64))
    for run in ["stream:500"] + sys.argv[1:]:  # the first run warms torch up
        mode, n = run.split(":")
        data = Generated(int(n))
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) starts again from here
        if mode == "stream":
            images = ImageStream(data)
        else:  # the control: the same images loaded
            images = as_images(np.stack([data[i] for i in range(len(data))]))
        embed_images(extractor, images, batch_size=100, device=torch.device("cpu"))
        images = None
        print(status("VmHWM") - before)
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_memory_of_a_stream_does_not_grow_with_the_images():
    n = 1500  # 12 KiB per image: 18 MiB loaded at N, 70 MiB at 4N
    out = subprocess.run([sys.executable, "-c", PROBE, f"stream:{n}", f"stream:{4 * n}",
                          f"memory:{n}", f"memory:{4 * n}"],
                         capture_output=True, text=True, check=True)
    growth = [int(line) for line in out.stdout.split()[1:]]
    floor = 10 << 20  # allocator noise, as in test_disk_cache
    stream, memory = growth[:2], growth[2:]
    assert stream[1] < 1.2 * max(stream[0], floor), growth
    # The control: loading the same images first fails the same check.
    assert memory[1] > 1.2 * max(memory[0], floor) and memory[1] - memory[0] > 40 << 20, growth


def test_finetune_on_a_stream_equals_the_loaded_images():
    from spice_learn.heads import MultiHeadClassifier
    from spice_learn.spice_semi import finetune

    pixels = _pixels(24)
    labels = np.arange(24) % 3
    results = []
    for images in (as_images(pixels), ImageStream(Pairs(pixels), num_workers=1)):
        torch.manual_seed(0)  # the same initial weights for both
        extractor = build_backbone(TinyNet(), None, (8, 8))
        head = MultiHeadClassifier(1, extractor.feature_dim, 8, 3,
                                   generator=torch.Generator().manual_seed(0))
        history = finetune(extractor, head, images, labels, np.ones(24, bool), n_steps=3,
                           batch_size=4, mu=2, threshold=0.5, learning_rate=0.03,
                           ema_decay=0.5, flip=True, seed=1, device=torch.device("cpu"))
        results.append((history, list(extractor.module.state_dict().values())))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-6)
    for p, q in zip(results[0][1], results[1][1]):
        assert torch.allclose(p, q, atol=1e-6)


def test_reading_a_stream_leaves_the_global_rng_alone():
    stream = ImageStream(Pairs(_pixels()), num_workers=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(stream.batches([slice(0, 8), slice(8, 16)]))
    assert torch.equal(torch.rand(3), expected)


def test_index_edge_cases():
    stream = ImageStream(_pixels(5))
    loaded = as_images(_pixels(5))
    assert stream.batches([[]]).__next__().shape == (0, 3, 8, 8)
    assert stream[[]].shape == (0, 3, 8, 8)
    assert torch.equal(stream[torch.tensor(2)], loaded[2])
    assert torch.equal(stream[-1], loaded[-1]) and torch.equal(stream[::-2], loaded.flip(0)[::2])
    with pytest.raises(IndexError, match="bool"):
        stream[True]


def test_a_dataset_is_hashed_once_per_stream():
    data = Pairs(_pixels(12))
    stream = ImageStream(data)
    data.reads.clear()
    first, second = hashlib.sha256(), hashlib.sha256()
    hash_images(first, stream)
    assert sorted(data.reads) == list(range(12))
    hash_images(second, stream)
    assert len(data.reads) == 12 and first.hexdigest() == second.hexdigest()


def test_a_deleted_file_is_named_when_the_stream_is_hashed(tmp_path):
    stream = ImageStream(_folder(tmp_path, _pixels(3)))
    (tmp_path / "img001.png").unlink()
    with pytest.raises(ValueError, match="img001.png"):
        hash_images(hashlib.sha256(), stream)


class Failing(nn.Module):
    def forward(self, x):
        raise RuntimeError("broken backbone")


def test_workers_stop_when_embedding_fails():
    import multiprocessing

    extractor = build_backbone(TinyNet(), None, (8, 8))
    extractor.module = Failing()
    stream = ImageStream(Pairs(_pixels(64)), num_workers=2)
    with pytest.raises(RuntimeError, match="broken backbone") as info:
        embed_views(extractor, stream, [None], batch_size=4, device=torch.device("cpu"))
    assert info.value.__traceback__ is not None  # the failed call's frames are still held
    assert multiprocessing.active_children() == []
