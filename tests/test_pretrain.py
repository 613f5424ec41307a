"""Stage 1: SimCLR loss, training loop, determinism, and when the estimator pretrains."""

import warnings

import numpy as np
import pytest
import torch
from _images import pattern_images, random_pixels

import spice_learn.representation as representation
from spice_learn import SpiceClustering
from spice_learn.backbones import build_backbone
from spice_learn.pretrain import ProjectionHead, pretrain_simclr, simclr_speed
from spice_learn.ssl_augment import contrastive_augment


def test_projection_head_shape():
    head = ProjectionHead(16, 4)
    assert head(torch.randn(5, 16)).shape == (5, 4)


def _pretrain(seed=0, epochs=3, **kwargs):
    extractor = build_backbone("spice_convnet4", None, (12, 12), seed=seed)
    params = dict(max_epochs=epochs, max_time=None, batch_size=32, learning_rate=3e-3,
                  temperature=0.5, projection_dim=16, flip=False, seed=seed,
                  device=torch.device("cpu"))
    params.update(kwargs)
    history = pretrain_simclr(extractor, pattern_images(), **params)
    return extractor, history


def test_simclr_speed_times_a_copy_and_leaves_everything_as_it_was():
    extractor = build_backbone("spice_convnet4", None, (12, 12), seed=0)
    extractor.module.eval()
    before = {name: value.clone() for name, value in extractor.module.state_dict().items()}
    images = pattern_images()
    kept = images.clone()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    speed = simclr_speed(extractor, images, batch_size=16, steps=2, min_time=0.0,
                         device=torch.device("cpu"),
                         augment=contrastive_augment(extractor.input_size, flip=False))
    assert np.isfinite(speed) and speed > 0
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream goes on unchanged
    after = extractor.module.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BN stats too
    assert not extractor.module.training
    assert torch.equal(images, kept)


def test_loss_falls_over_a_few_epochs():
    _, history = _pretrain(epochs=8)
    assert len(history) == 8
    assert np.mean(history[-2:]) < history[0] - 0.05


def test_fixed_seed_gives_identical_weights_on_cpu():
    (a, ha), (b, hb), (c, _) = _pretrain(seed=3), _pretrain(seed=3), _pretrain(seed=4)
    sa, sb, sc = a.module.state_dict(), b.module.state_dict(), c.module.state_dict()
    assert ha == hb
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_pretraining_leaves_module_frozen_and_in_eval_mode():
    extractor, _ = _pretrain(epochs=1)
    assert not extractor.module.training
    assert not any(p.requires_grad for p in extractor.module.parameters())


def test_time_budget_stops_after_one_step():
    _, history = _pretrain(epochs=50, max_time=0.0)
    assert len(history) == 1


def test_global_rng_untouched():
    state = torch.get_rng_state()
    _pretrain(epochs=1)
    assert torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------- estimator side
@pytest.fixture
def calls(monkeypatch):
    """Record pretraining calls without running them."""
    seen = []

    def fake(extractor, images, **kwargs):
        seen.append(kwargs)
        return [1.0]

    monkeypatch.setattr(representation, "pretrain_simclr", fake)
    return seen


def _images(n=24, size=8):
    return random_pixels(n, size)


FAST = dict(n_heads=2, max_epochs=1, n_weak_views=1, n_strong_views=1, semi_steps=5,
            random_state=0)


def test_auto_pretrains_random_timm_backbone(calls):
    est = SpiceClustering(3, backbone="spice_convnet4", **FAST).fit(_images())
    assert len(calls) == 1
    np.testing.assert_array_equal(est.pretrain_history_, [1.0])


def test_default_backbone_for_small_images_is_the_small_convnet(calls):
    est = SpiceClustering(3, **FAST).fit(_images())
    assert est.backbone_.name == "spice_convnet4" and est.backbone_.input_size == (16, 16)
    assert len(calls) == 1


def test_pretraining_skipped_when_weights_are_given(calls, tmp_path):
    path = tmp_path / "w.pth"
    source = build_backbone("spice_convnet4", None, (8, 8), seed=1).module
    torch.save(source.state_dict(), path)
    est = SpiceClustering(3, backbone="spice_convnet4", weights=str(path), **FAST).fit(_images())
    assert calls == [] and est.pretrain_history_.shape == (0,)
    for key, value in source.state_dict().items():
        assert torch.equal(est.backbone_.module.state_dict()[key], value)


def test_pretraining_skipped_for_user_modules_and_when_off(calls):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten())
    SpiceClustering(3, backbone=module, **FAST).fit(_images())
    SpiceClustering(3, backbone="spice_convnet4", pretrain=None, **FAST).fit(_images())
    assert calls == []


def test_pretrain_simclr_forces_pretraining_of_given_weights(calls, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_backbone("spice_convnet4", None, (8, 8)).module.state_dict(), path)
    SpiceClustering(3, backbone="spice_convnet4", weights=str(path), pretrain="simclr",
                    **FAST).fit(_images())
    assert len(calls) == 1


def test_fitted_backbone_can_be_reused_without_pretraining(calls):
    first = SpiceClustering(3, backbone="spice_convnet4", pretrain=None, **FAST).fit(_images())
    second = SpiceClustering(3, backbone=first.backbone_, **FAST).fit(_images())
    assert calls == []
    assert second.backbone_ is not first.backbone_
    a, b = first.backbone_.module.state_dict(), second.backbone_.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_estimator_pretraining_is_deterministic():
    params = dict(backbone="spice_convnet4", pretrain_epochs=2, pretrain_batch_size=16, **FAST)
    a = SpiceClustering(3, **params).fit(_images())
    b = SpiceClustering(3, **params).fit(_images())
    np.testing.assert_array_equal(a.pretrain_history_, b.pretrain_history_)
    assert len(a.pretrain_history_) == 2
    sa, sb = a.backbone_.module.state_dict(), b.backbone_.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(a.labels_, b.labels_)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"pretrain": "moco"}, "pretrain"),
        ({"pretrain_epochs": 0}, "pretrain_epochs"),
        ({"pretrain_time": -1.0}, "pretrain_time"),
        ({"pretrain_time": float("nan")}, "pretrain_time"),
        ({"pretrain_batch_size": 1}, "pretrain_batch_size"),
        ({"pretrain_learning_rate": 0.0}, "pretrain_learning_rate"),
        ({"temperature": 0.0}, "temperature"),
        ({"projection_dim": 0}, "projection_dim"),
    ],
)
def test_bad_pretraining_parameters(bad, match):
    with pytest.raises(ValueError, match=match):
        SpiceClustering(3, **bad).fit(_images())


def test_pretrain_time_accepts_only_seconds_none_or_auto():
    model = SpiceClustering(3, pretrain_time="fast")
    with pytest.raises(TypeError, match="pretrain_time"):
        model.fit(_images())
    assert not hasattr(model, "plan_")  # nothing fitted
    assert SpiceClustering(3).get_params()["pretrain_time"] == "auto"


def test_pretrain_simclr_needs_images():
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="pretrain='simclr' needs images"):
        SpiceClustering(2, backbone="precomputed", pretrain="simclr").fit(X)


def test_fitted_backbone_with_weights_is_rejected():
    first = SpiceClustering(3, backbone="spice_convnet4", pretrain=None, **FAST).fit(_images())
    with pytest.raises(ValueError, match="weights must be None .*fitted backbone_"):
        SpiceClustering(3, backbone=first.backbone_, weights="w.pth", **FAST).fit(_images())


# ------------------------------------------------------ checkpoint/resume and OOM
def _weights(extractor):
    return {k: v.clone() for k, v in extractor.module.state_dict().items()}


def test_checkpoint_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    import spice_learn.pretrain as pretrain_module

    reference, ref_history = _pretrain(epochs=4)
    path = tmp_path / "ckpt"
    real_save, saves = pretrain_module._save_checkpoint, []

    def save_then_crash(p, state):
        real_save(p, state)
        saves.append(len(state["history"]))
        if len(saves) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C after epoch 2

    monkeypatch.setattr(pretrain_module, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(epochs=4, checkpoint_dir=path)
    monkeypatch.setattr(pretrain_module, "_save_checkpoint", real_save)
    resumed, history = _pretrain(epochs=4, checkpoint_dir=path)  # epochs 3 and 4 only
    assert history == ref_history
    for key, value in _weights(reference).items():
        assert torch.equal(resumed.module.state_dict()[key], value), key


def test_checkpoint_of_other_settings_is_ignored(tmp_path):
    _pretrain(seed=1, epochs=2, checkpoint_dir=tmp_path)
    fresh, history = _pretrain(seed=2, epochs=2, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.glob("pretrain-*.pt"))) == 2  # one file per fingerprint
    reference, ref_history = _pretrain(seed=2, epochs=2)
    assert history == ref_history
    for key, value in _weights(reference).items():
        assert torch.equal(fresh.module.state_dict()[key], value), key


def test_batch_restored_from_a_checkpoint_is_checked(tmp_path, monkeypatch):
    _pretrain(epochs=1, checkpoint_dir=tmp_path)
    (path,) = tmp_path.glob("pretrain-*.pt")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "batch": 2}, path)  # halved after out-of-memory errors
    monkeypatch.setattr("spice_learn.distributed.world_size", lambda: 4)
    with pytest.raises(ValueError, match=r"at least the number of processes \(4\); got 2 "
                                         r"images per step \(restored from the checkpoint\)"):
        _pretrain(epochs=1, checkpoint_dir=tmp_path)


def test_finished_checkpoint_skips_training(tmp_path, monkeypatch):
    first, history = _pretrain(epochs=2, checkpoint_dir=tmp_path)
    monkeypatch.setattr("spice_learn.pretrain.nt_xent_loss",
                        lambda *a, **k: pytest.fail("trained again"))
    again, history2 = _pretrain(epochs=2, checkpoint_dir=tmp_path)
    assert history2 == history
    for key, value in _weights(first).items():
        assert torch.equal(again.module.state_dict()[key], value), key


class _OOMOnBigBatches(torch.nn.Module):
    """Raises CUDA's out-of-memory error for batches above ``limit`` images."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.conv = limit, torch.nn.Conv2d(3, 8, 3, padding=1)
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.conv(x)


def test_pretraining_halves_the_batch_after_oom():
    extractor = build_backbone(_OOMOnBigBatches(limit=20), None, (12, 12))
    with pytest.warns(RuntimeWarning, match="out of memory in pretraining"):
        history = pretrain_simclr(
            extractor, pattern_images(), max_epochs=2, max_time=None, batch_size=32,
            learning_rate=1e-3, temperature=0.5, projection_dim=8, flip=False, seed=0,
            device=torch.device("cpu"))
    assert len(history) == 2 and np.all(np.isfinite(history))
    sizes = extractor.module.module.sizes[1:]  # (wrapped for pooling; [0] is build's probe)
    assert sizes[:3] == [64, 32, 16]  # two views of 32, then 16, then 8 images
    assert set(sizes[2:]) == {16}  # every later step ran with the halved batch


class _StepRunsOutOfMemory(torch.optim.AdamW):
    """AdamW whose second step changes the first parameter, then runs out of memory."""

    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        if type(self).steps < 2:
            return super().step(closure)
        with torch.no_grad():
            self.param_groups[0]["params"][0].add_(1.0)  # a partly done update
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated, in the update)")


def test_oom_in_the_optimizer_step_is_raised(monkeypatch):
    # Halving the batch and going on would continue from partly updated weights.
    monkeypatch.setattr(_StepRunsOutOfMemory, "steps", 0)
    monkeypatch.setattr(torch.optim, "AdamW", _StepRunsOutOfMemory)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "continuing with batches of"
        with pytest.raises(torch.cuda.OutOfMemoryError, match="in the update"):
            _pretrain(epochs=2)
    assert _StepRunsOutOfMemory.steps == 2


def test_estimator_checkpoint_dir_reuses_pretraining(tmp_path, calls):
    params = dict(backbone="spice_convnet4", checkpoint_dir=str(tmp_path), **FAST)
    SpiceClustering(3, **params).fit(_images())
    assert calls[0]["checkpoint_dir"] == str(tmp_path)


@pytest.mark.parametrize("bad,error", [({"checkpoint_dir": 3}, TypeError),
                                       ({"n_jobs": 0}, ValueError),
                                       ({"n_jobs": 1.5}, TypeError)])
def test_bad_checkpoint_dir_and_n_jobs(bad, error):
    with pytest.raises(error, match=next(iter(bad))):
        SpiceClustering(3, **bad, **FAST).fit(_images())


def test_n_jobs_sets_threads_during_fit_and_restores_them(monkeypatch):
    seen = []
    monkeypatch.setattr(representation, "pretrain_simclr",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or [1.0])
    before = torch.get_num_threads()
    SpiceClustering(3, backbone="spice_convnet4", n_jobs=1, **FAST).fit(_images())
    assert seen == [1] and torch.get_num_threads() == before
