"""Tests of spice_learn.runtime: the device, thread, RNG, precision and OOM helpers."""

import warnings

import numpy as np
import pytest
import torch

from spice_learn.runtime import (
    autocast_dtype,
    derived_seed,
    draw_generator,
    halve_after_oom,
    isolated_rng,
    native_bf16,
    on_cuda,
    torch_threads,
    usable_device,
)

CUDA = torch.device("cuda")


@pytest.mark.parametrize("capability,native", [
    ((6, 0), False), ((7, 0), False), ((7, 5), False),  # Pascal, Volta, Turing: emulated
    ((8, 0), True), ((8, 6), True), ((8, 9), True), ((9, 0), True), ((10, 0), True),
])
def test_native_bf16_from_the_compute_capability(capability, native):
    assert native_bf16(capability) is native


@pytest.mark.parametrize("capability,bf16_only,expected", [
    ((7, 5), False, torch.float16), ((7, 5), True, None),
    ((8, 0), False, torch.bfloat16), ((8, 0), True, torch.bfloat16),
])
def test_cuda_autocast_follows_the_given_capability(capability, bf16_only, expected):
    assert autocast_dtype(CUDA, bf16_only=bf16_only, capability=capability) is expected


def test_cuda_autocast_asks_the_device_itself(monkeypatch):
    asked = []

    def capability(device):
        asked.append(device)
        return (7, 0) if device.index == 1 else (9, 0)

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation
    assert autocast_dtype(torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype(torch.device("cuda", 1)) is torch.float16
    assert asked == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_cpu_autocast_is_bf16_or_none():
    assert autocast_dtype(torch.device("cpu")) in (None, torch.bfloat16)


def test_on_cuda_splits_the_gpu_defaults():
    assert on_cuda("cuda") and on_cuda("cuda:1") and on_cuda(torch.device("cuda", 0))
    assert not on_cuda(None) and not on_cuda("cpu") and not on_cuda(torch.device("cpu"))


def test_usable_device_falls_back_to_the_cpu():
    assert usable_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert usable_device("cuda:0") == torch.device("cpu")


def test_torch_threads_restores_the_setting():
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_isolated_rng_is_seeded_and_leaves_the_global_state():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with isolated_rng(torch.device("cpu"), 7):
        a = torch.rand(3)
    with isolated_rng(torch.device("cpu"), 7):
        b = torch.rand(3)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def test_derived_seeds_differ_by_key_and_are_stable():
    seeds = [derived_seed(0, k) for k in range(5)]
    assert len(set(seeds)) == 5 and all(0 <= s < 2**63 for s in seeds)
    assert derived_seed(0, 3) == seeds[3]
    # negative seeds (which torch.manual_seed takes) count modulo 2**64
    assert derived_seed(-1, 3) == derived_seed(2**64 - 1, 3) != seeds[3]


def test_halve_after_oom_warns_and_keeps_one():
    with pytest.warns(RuntimeWarning, match="batches of 8 instead of 16"):
        assert halve_after_oom(16, torch.device("cpu"), "a test") == 8
    with pytest.warns(RuntimeWarning):
        assert halve_after_oom(1, torch.device("cpu"), "a test") == 1


def test_draw_generator_is_the_given_one_on_the_cpu():
    gen = torch.Generator().manual_seed(3)
    assert draw_generator(gen, "cpu", 3, 1) is gen
    assert draw_generator(gen, torch.device("cpu"), 3, 1) is gen


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_draw_generator_on_cuda_is_seeded_on_the_device():
    a, b = (draw_generator(torch.Generator(), CUDA, 3, 1) for _ in range(2))
    assert a.device.type == "cuda"
    assert torch.equal(torch.rand(4, generator=a, device=a.device),
                       torch.rand(4, generator=b, device=b.device))
    c = draw_generator(torch.Generator(), CUDA, 3, 2)
    assert not torch.equal(torch.rand(4, generator=c, device=c.device),
                           torch.rand(4, generator=b, device=b.device))


def _host_waits(fn):
    """Number of synchronizing CUDA operations ``fn()`` makes."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchronizing" in str(w.message) for w in caught)


def _trainings():
    """``(name, run, steps)``: short head and pretraining runs on CUDA, ``run(r)`` a
    run ``r`` times as long as ``run(1)``, which makes ``steps`` training steps
    (imports here: the helpers live in the modules' tests)."""
    from _images import pattern_images
    from test_spice_self import make_cache

    from spice_learn.backbones import build_backbone
    from spice_learn.neighbors import nearest_neighbors
    from spice_learn.pretrain import pretrain_simclr
    from spice_learn.scan_heads import train_scan_heads
    from spice_learn.spice_self import train_heads
    from spice_learn.spice_semi import train_semi_head

    cache, y = make_cache(n=1024)
    nb = nearest_neighbors(cache.original, 5)
    common = dict(n_clusters=4, hidden_dim=16, learning_rate=1e-3, seed=0, device=CUDA)
    images = pattern_images(n=320)
    return [
        ("scan heads", lambda r: train_scan_heads(
            cache, nb, n_heads=2, minibatch_size=64, max_epochs=2 * r, entropy_weight=5.0,
            **common), 2 * (1024 // 64)),
        ("spice heads", lambda r: train_heads(  # 3 draws a batch of 256 (8 updates)
            cache, n_heads=2, batch_size=256, minibatch_size=32, max_epochs=2 * r,
            confidence_ratio=0.5, entropy_weight=2.0, **common), 2 * 4),
        ("semi head", lambda r: train_semi_head(
            cache, y, np.ones(len(y), bool), n_steps=20 * r, batch_size=16, mu=3,
            threshold=0.9, **common), 20),
        ("pretraining", lambda r: pretrain_simclr(
            build_backbone("spice_convnet4", None, (12, 12), seed=0), images,
            max_epochs=2 * r, max_time=None, batch_size=32, learning_rate=1e-3,
            temperature=0.5, projection_dim=16, flip=True, seed=0, device=CUDA),
         2 * (320 // 32)),
    ]


@needs_cuda
@pytest.mark.parametrize("which", range(4))
def test_training_steps_do_not_wait_for_the_gpu(which):
    # Random draws inside the steps are made on the device (draw_generator). A run
    # three times as long may add a wait per epoch (the losses handed back), not a
    # few per step as when numbers drawn on the host were copied over in every step.
    # Set-up (models moved to the GPU) waits too, the same in both runs.
    name, run, n_steps = _trainings()[which]
    run(1)  # warm-up: first-call set-up (cuBLAS handles, allocator)
    short, long = _host_waits(lambda: run(1)), _host_waits(lambda: run(3))
    assert long - short < n_steps, (
        f"{name}: {long - short} more host waits in {2 * n_steps} more steps")
