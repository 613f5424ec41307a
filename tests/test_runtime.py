"""Tests of spice_learn.runtime: the device, thread, RNG, precision and OOM helpers."""

import pytest
import torch

from spice_learn.runtime import (
    autocast_dtype,
    derived_seed,
    halve_after_oom,
    isolated_rng,
    native_bf16,
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


def test_halve_after_oom_warns_and_keeps_one():
    with pytest.warns(RuntimeWarning, match="batches of 8 instead of 16"):
        assert halve_after_oom(16, torch.device("cpu"), "a test") == 8
    with pytest.warns(RuntimeWarning):
        assert halve_after_oom(1, torch.device("cpu"), "a test") == 1
