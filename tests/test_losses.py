"""Tests of spice_learn.losses (the losses of all three stages)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spice_learn.losses import (
    double_softmax_cross_entropy,
    entropy_regularised,
    fixmatch_loss,
    negative_entropy_of_mean,
    nt_xent_loss,
    semi_loss,
)


def _ds_ce_by_hand(p, label):
    """-log softmax(p)[label] written out with math.exp / math.log."""
    denom = sum(math.exp(v) for v in p)
    return -math.log(math.exp(p[label]) / denom)


def test_double_softmax_cross_entropy_by_hand():
    # Head 0: two samples, head 1: two samples; p rows are already softmax outputs.
    p = [
        [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]],
        [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]],
    ]
    labels = [[0, 2], [1, 0]]
    # Written out for head 0, sample 0: -log(e^0.7 / (e^0.7 + e^0.2 + e^0.1)).
    h0s0 = -math.log(math.exp(0.7) / (math.exp(0.7) + math.exp(0.2) + math.exp(0.1)))
    assert h0s0 == pytest.approx(0.7679495, abs=1e-6)
    expected = [
        (_ds_ce_by_hand(p[0][0], 0) + _ds_ce_by_hand(p[0][1], 2)) / 2,
        (_ds_ce_by_hand(p[1][0], 1) + _ds_ce_by_hand(p[1][1], 0)) / 2,
    ]
    loss = double_softmax_cross_entropy(torch.tensor(p, dtype=torch.float64), torch.tensor(labels))
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)
    assert _ds_ce_by_hand(p[0][0], 0) == pytest.approx(h0s0)


@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 5, 4), (10, 7, 10)])
def test_double_softmax_cross_entropy_shape(shape):
    probs = torch.rand(shape).softmax(dim=2)
    targets = torch.randint(0, shape[2], shape[:2])
    assert double_softmax_cross_entropy(probs, targets).shape == (shape[0],)


@pytest.mark.parametrize("k", [2, 3, 10, 200])
def test_one_hot_loss_is_positive_and_minimal(k):
    one_hot = torch.eye(k, dtype=torch.float64)[None]  # (1, k, k): sample i is one-hot on i
    loss = double_softmax_cross_entropy(one_hot, torch.arange(k)[None])
    expected = math.log(k - 1 + math.e) - 1
    assert loss.item() > 0
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # No prediction does better than the correct one-hot one.
    gen = torch.Generator().manual_seed(k)
    probs = torch.rand((1, 500, k), generator=gen, dtype=torch.float64).pow(4)
    probs = probs / probs.sum(dim=2, keepdim=True)
    targets = torch.randint(0, k, (1, 500), generator=gen)
    per_sample = torch.stack(
        [double_softmax_cross_entropy(probs[:, i : i + 1], targets[:, i : i + 1]) for i in range(500)]
    )
    assert per_sample.min().item() >= expected - 1e-12


def test_wrong_one_hot_is_worse():
    k = 4
    right = double_softmax_cross_entropy(torch.eye(k)[None, :1], torch.tensor([[0]]))
    wrong = double_softmax_cross_entropy(torch.eye(k)[None, :1], torch.tensor([[1]]))
    assert wrong.item() == pytest.approx(math.log(k - 1 + math.e), rel=1e-6)
    assert wrong.item() > right.item()


def test_double_softmax_cross_entropy_is_differentiable():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    loss = double_softmax_cross_entropy(logits.softmax(dim=2), torch.randint(0, 3, (2, 4)))
    loss.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("k", [2, 5, 10])
def test_negative_entropy_of_uniform_mean(k):
    # Each sample one-hot on a different cluster: the mean prediction is uniform.
    probs = torch.eye(k, dtype=torch.float64).repeat(2, 3, 1)  # (2, 3k, k)
    value = negative_entropy_of_mean(probs)
    assert value.shape == (2,)
    assert value.tolist() == pytest.approx([-math.log(k)] * 2, rel=1e-12)
    # Uniform predictions per sample give the same mean.
    uniform = torch.full((1, 4, k), 1.0 / k, dtype=torch.float64)
    assert negative_entropy_of_mean(uniform).item() == pytest.approx(-math.log(k), rel=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_negative_entropy_of_collapsed_mean_is_zero(k):
    probs = torch.zeros((3, 8, k))
    probs[:, :, 1] = 1.0  # every sample in cluster 1
    value = negative_entropy_of_mean(probs)
    assert value.shape == (3,)
    assert value.abs().max().item() == pytest.approx(0.0, abs=1e-5)


def test_negative_entropy_lies_between_bounds():
    k = 6
    probs = torch.rand(4, 20, k).softmax(dim=2)
    value = negative_entropy_of_mean(probs)
    assert torch.all(value >= -math.log(k) - 1e-6)
    assert torch.all(value <= 1e-6)


def test_entropy_regularised_adds_the_weighted_term_only_when_weighted():
    probs = torch.rand(3, 10, 4, generator=torch.Generator().manual_seed(0)).softmax(dim=2)
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert entropy_regularised(loss, probs, 0.0) is loss
    torch.testing.assert_close(entropy_regularised(loss, probs, 2.0),
                               loss + 2.0 * negative_entropy_of_mean(probs))


# --------------------------------------------------------------------------- stage 1: NT-Xent


def test_nt_xent_matches_hand_computation_identical_views():
    # Views a, b and their copies a', b' (unit vectors, t = 1). For a: similarity 1 to
    # its positive a', 0 to b and b' -> loss = -log(e / (e + 2)) = log(2 + e) - 1.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = nt_xent_loss(z, z.clone(), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(2 + math.e) - 1, abs=1e-6)


def test_nt_xent_matches_hand_computation_swapped_views():
    # Positives orthogonal (similarity 0), one negative aligned (similarity 1):
    # -log(1 / (1 + 1 + e)) = log(2 + e).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert nt_xent_loss(z1, z2, 1.0).item() == pytest.approx(math.log(2 + math.e), abs=1e-6)


def test_nt_xent_temperature_and_scale_invariance():
    z1 = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[0.0, 5.0], [1.0, 0.0]])
    # Projections are L2-normalised inside; t = 0.5 doubles every similarity.
    expected = math.log(2 + math.exp(2.0))
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(expected, abs=1e-5)


def test_nt_xent_single_pair_is_zero():
    z = torch.tensor([[0.3, -1.2, 0.5]])
    assert nt_xent_loss(z, z * 2, 0.1).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- stage 3: Eq. 6


def test_fixmatch_loss_masks_low_confidence_samples():
    weak = torch.tensor([[10.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 9.0]])
    strong = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss, mask = fixmatch_loss(weak, strong, threshold=0.95)
    np.testing.assert_array_equal(mask.numpy(), [True, False, True])
    ce = F.cross_entropy(strong, torch.tensor([0, 0, 2]), reduction="none")
    expected = (ce[0] + ce[2]) / 3  # masked samples count as zeros in the mean
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(strong.grad[1] == 0)  # the low-confidence row gets no gradient
    assert torch.all(strong.grad[0] != 0) and torch.all(strong.grad[2] != 0)


def test_fixmatch_loss_gives_no_gradient_to_the_weak_view():
    weak = torch.tensor([[10.0, 0.0], [0.0, 10.0]], requires_grad=True)
    strong = torch.zeros(2, 2, requires_grad=True)
    loss, _ = fixmatch_loss(weak, strong, threshold=0.5)
    loss.backward()
    assert weak.grad is None
    torch.testing.assert_close(loss, torch.tensor(np.log(2.0), dtype=torch.float32))


def test_fixmatch_loss_is_zero_when_nothing_is_confident():
    weak = torch.zeros(4, 5)  # uniform: confidence 0.2
    loss, mask = fixmatch_loss(weak, torch.randn(4, 5), threshold=0.95)
    assert not mask.any() and loss.item() == 0.0


def test_semi_loss_splits_labelled_weak_and_strong_rows():
    gen = torch.Generator().manual_seed(0)
    labelled, weak, strong = (torch.randn(n, 3, generator=gen) for n in (2, 4, 4))
    weak[0, 1] = 20.0  # one confident unlabelled sample
    targets = torch.tensor([2, 0])
    sup, unsup, mask = semi_loss(torch.cat([labelled, weak, strong]), targets, 0.95)
    torch.testing.assert_close(sup, F.cross_entropy(labelled, targets))
    expected, expected_mask = fixmatch_loss(weak, strong, 0.95)
    torch.testing.assert_close(unsup, expected)
    assert torch.equal(mask, expected_mask) and mask.tolist() == [True, False, False, False]
