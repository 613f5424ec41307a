"""Tests of spice_learn.heads.MultiHeadClassifier."""

import pytest
import torch

from spice_learn.heads import MultiHeadClassifier, resolve_hidden_dim, train_epochs

H, D, HIDDEN, K = 4, 6, 5, 3


def _heads(seed=0, n_heads=H):
    gen = torch.Generator().manual_seed(seed)
    return MultiHeadClassifier(n_heads, D, HIDDEN, K, generator=gen)


def _warm_up(heads, steps=5):
    """Run a few training forward passes so BatchNorm running stats are not trivial."""
    gen = torch.Generator().manual_seed(123)
    heads.train()
    with torch.no_grad():
        for _ in range(steps):
            heads(torch.randn(16, D, generator=gen) * 3 + 1)
    # and non-trivial affine parameters of BatchNorm
    with torch.no_grad():
        heads.norm.weight.uniform_(0.5, 1.5, generator=gen)
        heads.norm.bias.uniform_(-0.5, 0.5, generator=gen)
    return heads


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_output_shape_shared_input(batch):
    heads = _heads().eval()
    out = heads(torch.randn(batch, D))
    assert out.shape == (H, batch, K)


@pytest.mark.parametrize("batch", [2, 7])
def test_output_shape_per_head_input(batch):
    heads = _heads().train()
    out = heads(torch.randn(H, batch, D))
    assert out.shape == (H, batch, K)


def test_shared_input_equals_repeated_per_head_input():
    heads = _warm_up(_heads()).eval()
    x = torch.randn(9, D)
    torch.testing.assert_close(heads(x), heads(x.expand(H, 9, D)))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_heads_are_independent(mode):
    heads = _warm_up(_heads())
    heads.train(mode == "train")
    x = torch.randn(H, 12, D)
    logits = heads(x)
    target = torch.randint(0, K, (12,))
    loss = torch.nn.functional.cross_entropy(logits[0], target)
    loss.backward()
    for name in ("w1", "b1", "w2", "b2"):
        grad = getattr(heads, name).grad
        assert grad is not None, name
        assert grad[0].abs().sum() > 0, f"head 0 gets no gradient for {name}"
        assert torch.all(grad[1:] == 0), f"other heads got a gradient in {name}"
    for name in ("weight", "bias"):
        grad = getattr(heads.norm, name).grad.view(H, HIDDEN)
        assert grad[0].abs().sum() > 0, name
        assert torch.all(grad[1:] == 0), f"other heads got a gradient in norm.{name}"


def test_heads_independent_of_other_heads_inputs():
    """Changing head 1's inputs does not change head 0's logits (even in train mode)."""
    heads = _warm_up(_heads()).train()
    x = torch.randn(H, 10, D)
    y = x.clone()
    y[1:] = torch.randn(H - 1, 10, D) * 5
    with torch.no_grad():
        torch.testing.assert_close(heads(x)[0], heads(y)[0])


@pytest.mark.parametrize("head", range(H))
def test_select_matches_head_in_eval_mode(head):
    heads = _warm_up(_heads()).eval()
    sub = heads.select([head])
    assert isinstance(sub, MultiHeadClassifier)
    assert sub.n_heads == 1
    assert not sub.training
    x = torch.randn(11, D)
    with torch.no_grad():
        torch.testing.assert_close(sub(x)[0], heads(x)[head])


def test_select_several_heads_keeps_order():
    heads = _warm_up(_heads()).eval()
    sub = heads.select([3, 1])
    x = torch.randn(5, D)
    with torch.no_grad():
        out = sub(x)
        full = heads(x)
    assert out.shape == (2, 5, K)
    torch.testing.assert_close(out[0], full[3])
    torch.testing.assert_close(out[1], full[1])


def test_select_is_a_copy():
    heads = _warm_up(_heads()).eval()
    sub = heads.select([0])
    before = heads.w1.detach().clone()
    with torch.no_grad():
        sub.w1.add_(1.0)
    torch.testing.assert_close(heads.w1.detach(), before)


def test_seeded_generator_gives_identical_init():
    a, b = _heads(seed=7), _heads(seed=7)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    c = _heads(seed=8)
    assert not torch.equal(a.w1, c.w1)
    assert not torch.equal(a.w2, c.w2)


def test_seeded_init_does_not_touch_global_rng():
    state = torch.get_rng_state()
    _heads(seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_heads_get_different_initial_weights():
    heads = _heads()
    assert not torch.equal(heads.w1[0], heads.w1[1])
    assert not torch.equal(heads.w2[0], heads.w2[1])


def test_train_epochs_needs_at_least_one_epoch():
    def epochs():
        yield from ()

    with pytest.raises(ValueError, match="n_epochs"):
        train_epochs(epochs(), 0, desc="test")


@pytest.mark.parametrize("hidden_dim, dim, expected", [
    ("auto", 256, 128), ("auto", 64, 64), ("auto", 512, 128), (None, 256, 256), (32, 256, 32),
])
def test_hidden_width_rule(hidden_dim, dim, expected):
    assert resolve_hidden_dim(hidden_dim, dim) == expected
