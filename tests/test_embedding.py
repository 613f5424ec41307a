"""Tests of spice_learn.embedding."""

import os
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from _nets import TinyNet
from torch import nn

from spice_learn.cache_augment import strong_transform, weak_transform
from spice_learn.backbones import build_backbone
from spice_learn import embedding
from spice_learn.embedding import (
    ViewCache,
    augment_workers,
    cache_nbytes,
    embed_images,
    embed_views,
)
from spice_learn.image_stream import ImageStream
from spice_learn.runtime import torch_threads

CPU = torch.device("cpu")
N, FEAT = 10, 8


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return build_backbone(TinyNet(channels=FEAT, leak=0.01), None, (16, 16))


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (N, 3, 16, 16), dtype=torch.uint8, generator=gen)


def _transforms(extractor):
    size = extractor.input_size
    return [None, weak_transform(size), weak_transform(size), strong_transform(size)]


def test_extractor_from_user_module(extractor):
    assert extractor.feature_dim == FEAT
    assert extractor.input_size == (32, 32)


def test_embed_views_shape_and_normalisation(extractor, images):
    out = embed_views(extractor, images, _transforms(extractor), batch_size=4, device=CPU)
    assert out.shape == (4, N, FEAT)
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    torch.testing.assert_close(out.norm(dim=2), torch.ones(4, N), atol=1e-4, rtol=0)
    assert torch.isfinite(out).all()
    # Augmented views differ from the original one.
    assert not torch.allclose(out[0], out[3])


def test_embed_views_float16_storage(extractor, images):
    out = embed_views(
        extractor, images, _transforms(extractor), batch_size=3, device=CPU, dtype=torch.float16
    )
    assert out.dtype == torch.float16
    assert out.shape == (4, N, FEAT)
    torch.testing.assert_close(out.float().norm(dim=2), torch.ones(4, N), atol=5e-3, rtol=0)
    ref = embed_views(extractor, images, _transforms(extractor), batch_size=3, device=CPU)
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=0)


def test_embed_views_is_deterministic_for_a_seed(extractor, images):
    kwargs = dict(batch_size=4, device=CPU)
    a = embed_views(extractor, images, _transforms(extractor), seed=3, **kwargs)
    b = embed_views(extractor, images, _transforms(extractor), seed=3, **kwargs)
    assert torch.equal(a, b)
    c = embed_views(extractor, images, _transforms(extractor), seed=4, **kwargs)
    assert torch.equal(a[0], c[0])  # the original view has no randomness
    assert not torch.equal(a[1:], c[1:])


def test_embed_views_keeps_global_rng_state(extractor, images):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    embed_views(extractor, images, _transforms(extractor), batch_size=4, device=CPU, seed=9)
    assert torch.equal(torch.get_rng_state(), state)


def test_batch_size_does_not_change_original_view(extractor, images):
    a = embed_views(extractor, images, [None], batch_size=1, device=CPU)
    b = embed_views(extractor, images, [None], batch_size=N, device=CPU)
    torch.testing.assert_close(a, b, atol=2e-2, rtol=0)


def test_embed_images_matches_original_view(extractor, images):
    feats = embed_images(extractor, images, batch_size=4, device=CPU)
    assert feats.shape == (N, FEAT) and feats.dtype == torch.float32
    views = embed_views(extractor, images, _transforms(extractor), batch_size=4, device=CPU)
    torch.testing.assert_close(feats, views[0])


def test_embed_views_resizes_other_sizes(extractor):
    imgs = torch.randint(0, 256, (3, 3, 20, 12), dtype=torch.uint8)
    out = embed_views(extractor, imgs, [None, weak_transform(extractor.input_size)],
                      batch_size=2, device=CPU)
    assert out.shape == (2, 3, FEAT)


def test_embed_views_does_not_modify_images(extractor, images):
    before = images.clone()
    embed_views(extractor, images, _transforms(extractor), batch_size=4, device=CPU)
    assert torch.equal(images, before)


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="augmentation workers are forked, on Linux only")


@LINUX_ONLY
def test_worker_processes_augment_the_same_views(extractor, images, monkeypatch):
    """Blocks augmented by worker processes give the views augmented in this process,
    and the caller's RNG is left as it was."""
    kwargs = dict(batch_size=3, device=CPU, seed=5)
    monkeypatch.setattr(embedding, "MIN_PARALLEL_VIEWS", 10**9)
    serial = embed_views(extractor, images, _transforms(extractor), **kwargs)
    monkeypatch.setattr(embedding, "MIN_PARALLEL_VIEWS", 1)
    used = []
    parallel = embedding._BlockViews.parallel
    monkeypatch.setattr(embedding._BlockViews, "parallel",
                        lambda self, workers, **kw: used.append(workers) or parallel(
                            self, workers, **kw))
    torch.manual_seed(7)
    state = torch.get_rng_state()
    with torch_threads(2):
        out = embed_views(extractor, images, _transforms(extractor), **kwargs)
    assert used == [2]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, serial)


@pytest.fixture
def views():
    """One original and two augmented views of 16-px images."""
    return [None, weak_transform((16, 16)), strong_transform((16, 16))]


@LINUX_ONLY
def test_augment_workers_rules(images, views, monkeypatch):
    monkeypatch.setattr(embedding, "MIN_PARALLEL_VIEWS", 20)
    with torch_threads(4):
        assert augment_workers(images, views, 10, n_blocks=5) == 4
        assert augment_workers(images, views, 10, n_blocks=3) == 3  # one per block at most
        assert augment_workers(images, views, 10, n_blocks=1) == 0
        assert augment_workers(images, views, 9, n_blocks=5) == 0  # 18 augmented views
        assert augment_workers(images, [None], 1000, n_blocks=5) == 0  # nothing augmented
        monkeypatch.setattr(embedding, "MAX_AUGMENT_WORKERS", 3)
        assert augment_workers(images, views, 10, n_blocks=5) == 3
        stream = ImageStream(images)
        assert augment_workers(stream, views, 10, n_blocks=5) == 0  # its own workers decode
    with torch_threads(1):
        assert augment_workers(images, views, 10, n_blocks=5) == 0


@LINUX_ONLY
def test_no_augment_workers_in_a_daemon_process(images, views, monkeypatch):
    """A multiprocessing.Pool worker (a daemon) may not start processes: it augments itself."""
    monkeypatch.setattr(embedding, "MIN_PARALLEL_VIEWS", 1)
    with torch_threads(4):
        assert augment_workers(images, views, 10, n_blocks=5) == 4
        monkeypatch.setattr(embedding.multiprocessing, "current_process",
                            lambda: SimpleNamespace(daemon=True))
        assert augment_workers(images, views, 10, n_blocks=5) == 0


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_no_augment_workers_off_linux(images, views, monkeypatch, platform):
    """Workers are forked; elsewhere the spawn start would import the caller's script again."""
    monkeypatch.setattr(embedding, "MIN_PARALLEL_VIEWS", 1)
    monkeypatch.setattr(embedding.sys, "platform", platform)
    with torch_threads(4):
        assert augment_workers(images, views, 10, n_blocks=5) == 0


@pytest.mark.parametrize(
    "n,views,dim,dtype,expected",
    [
        (10, 3, 8, torch.float32, 10 * 3 * 8 * 4),
        (10, 3, 8, torch.float16, 10 * 3 * 8 * 2),
        (60000, 7, 512, torch.float32, 860_160_000),
        (60000, 7, 512, torch.float16, 430_080_000),
        (1, 1, 1, torch.float64, 8),
    ],
)
def test_cache_nbytes(n, views, dim, dtype, expected):
    assert cache_nbytes(n, views, dim, dtype) == expected


def test_view_cache_properties():
    cache = ViewCache(torch.zeros(5, 3), torch.zeros(2, 5, 3), torch.zeros(4, 5, 3))
    assert cache.n_samples == 5
    moved = cache.to(CPU)
    assert moved.original.shape == (5, 3)
    assert moved.weak.shape == (2, 5, 3) and moved.strong.shape == (4, 5, 3)


class _OOMAbove(nn.Module):
    """A conv net that raises CUDA's out-of-memory error for batches above ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.conv = limit, nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.conv(x)


def test_oom_halves_the_batch_and_gives_the_same_embeddings():
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    module = _OOMAbove(limit=7)
    extractor = build_backbone(module, None, (8, 8))
    cpu = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match="out of memory in embedding"):
        got = embed_images(extractor, images, batch_size=32, device=cpu)
    module.limit = 10**6
    reference = embed_images(build_backbone(module, None, (8, 8)), images, batch_size=32,
                             device=cpu)
    torch.testing.assert_close(got, reference)


def test_oom_with_batches_of_one_is_raised():
    extractor = build_backbone(_OOMAbove(limit=8), None, (8, 8))
    extractor.module.module.limit = 0  # (the copy build_backbone wrapped for pooling)
    with pytest.raises(torch.cuda.OutOfMemoryError), pytest.warns(RuntimeWarning):
        embed_images(extractor, torch.zeros((3, 3, 8, 8), dtype=torch.uint8), batch_size=4,
                     device=torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_stages_match_the_eager_ones(extractor, images):
    """The real torch.compile (tens of seconds per graph on the CPU)."""
    from spice_learn.pretrain import pretrain_simclr

    cpu = torch.device("cpu")
    eager = embed_views(extractor, images, _transforms(extractor), batch_size=16, device=cpu,
                        seed=1)
    fast = embed_views(extractor, images, _transforms(extractor), batch_size=16, device=cpu,
                       seed=1, compile=True)
    assert torch.allclose(eager, fast, atol=1e-4)
    kwargs = dict(max_epochs=2, max_time=None, batch_size=16, learning_rate=1e-3,
                  temperature=0.5, projection_dim=8, flip=True, seed=0, device=cpu)
    losses = []
    for compile in (False, True):
        torch.manual_seed(0)  # the same initial weights for both
        fresh = build_backbone(TinyNet(channels=FEAT, leak=0.01), None, (16, 16))
        losses.append(pretrain_simclr(fresh, images, compile=compile, **kwargs))
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)  # bf16 autocast on some CPUs


def test_compile_is_ignored_under_torchrun_with_a_warning(monkeypatch):
    from spice_learn import distributed
    from spice_learn.embedding import compiled

    module = nn.Linear(2, 2)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.warns(UserWarning, match="ignored under torchrun"):
        assert compiled(module, True) is module
    assert compiled(module, False) is module
