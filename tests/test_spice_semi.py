"""Tests of spice_learn.spice_semi (FixMatch loss, "head" and "finetune" modes)."""

import copy

import numpy as np
import pytest
import torch
from test_spice_self import make_cache

from spice_learn import SpiceClustering, spice_semi
from spice_learn.backbones import build_backbone
from spice_learn.heads import MultiHeadClassifier
from spice_learn.metrics import cluster_accuracy
from spice_learn.representation import MIN_FINETUNE_STEPS, Stage1Plan
from spice_learn.settings import resolve_settings
from spice_learn.spice_self import head_probabilities
from spice_learn.spice_semi import finetune, train_semi_head

CPU = torch.device("cpu")


def _semi_head(cache, labels, reliable, **kwargs):
    params = dict(n_clusters=4, hidden_dim=16, n_steps=150, batch_size=16, mu=3,
                  threshold=0.9, learning_rate=1e-2, seed=0, device=CPU)
    params.update(kwargs)
    return train_semi_head(cache, labels, reliable, **params)


def test_semi_head_learns_from_reliable_samples_only(monkeypatch):
    # Most labels are wrong in one systematic way (cluster c labelled c + 1) and only
    # the correct ones are marked reliable: a head that learned from unreliable samples
    # too would follow the majority and predict y + 1 (cluster_accuracy would not see
    # it, being blind to relabelling, so predictions are compared with y itself).
    cache, y = make_cache(seed=1)
    rng = np.random.default_rng(0)
    wrong = rng.random(len(y)) < 0.7
    labels = np.where(wrong, (y + 1) % 4, y)
    drawn, real_draw = [], spice_semi._draw

    def recording_draw(*args):
        labelled, unlabelled = real_draw(*args)
        drawn.append(labelled)
        return labelled, unlabelled

    monkeypatch.setattr(spice_semi, "_draw", recording_draw)
    head, history = _semi_head(cache, labels, ~wrong)
    labelled = torch.cat(drawn).numpy()
    assert len(labelled) == 150 * 16 and not wrong[labelled].any()  # reliable rows only
    pred = head_probabilities(head, cache.original)[0].argmax(1).numpy()
    assert (pred == y).mean() > 0.97
    assert history.shape == (150, 3)
    assert history[-20:, 2].mean() > 0.5  # most unlabelled samples pass the threshold


def test_semi_head_is_deterministic_and_fresh():
    cache, y = make_cache(seed=2)
    reliable = np.ones(len(y), bool)
    a, ha = _semi_head(cache, y, reliable, n_steps=20)
    b, hb = _semi_head(cache, y, reliable, n_steps=20)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    np.testing.assert_array_equal(ha, hb)
    assert a.n_heads == 1


def test_semi_head_time_budget_stops_early():
    cache, y = make_cache(seed=3)
    _, history = _semi_head(cache, y, np.ones(len(y), bool), n_steps=10_000, max_time=0.2)
    assert 1 <= len(history) < 10_000


def test_semi_needs_a_reliable_sample():
    cache, y = make_cache()
    with pytest.raises(ValueError, match="reliable"):
        _semi_head(cache, y, np.zeros(len(y), bool))


def _cross_cut_labels(cache, n_clusters, seed=0):
    """Equal-sized clusters by quantiles of a random projection: every cluster is
    filled, but the boundaries cut through the blobs and their neighbourhoods."""
    r = torch.randn(cache.original.shape[1], generator=torch.Generator().manual_seed(seed))
    order = torch.argsort(cache.original.float() @ r).numpy()
    labels = np.empty(len(order), int)
    labels[order] = np.arange(len(order)) * n_clusters // len(order)
    return labels


def _semi_rounds(cache, labels, train_labels, monkeypatch, **settings):
    """run_spice_semi from ``labels``, its rounds' heads trained on ``train_labels`` (one
    array for every round, or a list of one per round)."""
    real = spice_semi.train_semi_head
    targets = iter(train_labels if isinstance(train_labels, list) else [train_labels] * 9)

    def trained_on(cache, labels, reliable, **kwargs):
        return real(cache, next(targets), np.ones(len(labels), bool), **kwargs)

    monkeypatch.setattr(spice_semi, "train_semi_head", trained_on)
    n, dim = cache.original.shape
    start = MultiHeadClassifier(1, dim, dim, 4, generator=torch.Generator().manual_seed(0))
    params = dict(n_neighbors=10, steps=150, rounds=2, batch_size=16, mu=3,
                  learning_rate=1e-2, threshold=0.9)
    params.update(settings)
    lines = []
    result = spice_semi.run_spice_semi(
        cache, cache.original, start, labels, None, spice_semi.SemiSettings(**params),
        seed=0, device=CPU, log=lines.append)
    pred = head_probabilities(result.classifier, cache.original)[0].argmax(1).numpy()
    return result, start, pred, lines


def test_a_round_that_agrees_less_with_the_neighbours_is_undone(monkeypatch):
    # The round's head learns clusters that cut through the blobs: all four are
    # filled (the empty-cluster check passes), but the 10-neighbour agreement drops.
    cache, y = make_cache(seed=5)
    cut = _cross_cut_labels(cache, 4)
    result, start, pred, lines = _semi_rounds(cache, y, cut, monkeypatch)
    assert result.classifier is start and result.rounds == 0 and result.history is None
    np.testing.assert_array_equal(
        pred, head_probabilities(start, cache.original)[0].argmax(1).numpy())
    assert len(lines) == 1 and "round 1 undone" in lines[0]
    assert "SPICE-Self clustering is kept" in lines[0]


def test_a_round_that_agrees_at_least_as_well_is_kept(monkeypatch):
    # From the cross-cut clustering, a head trained on the blobs raises the agreement.
    cache, y = make_cache(seed=5)
    cut = _cross_cut_labels(cache, 4)
    result, start, pred, lines = _semi_rounds(cache, cut, y, monkeypatch)
    assert result.rounds == 2 and result.history.shape == (2 * 150, 3)
    assert cluster_accuracy(y, pred) > 0.97
    assert all("undone" not in line for line in lines)


def test_each_round_is_judged_against_the_last_kept_one(monkeypatch):
    # Round 1 (cut -> blobs) raises the agreement; round 2 splits one blob in two: still
    # above the cut it all started from, but below round 1, so it is undone.
    cache, y = make_cache(seed=5)
    cut = _cross_cut_labels(cache, 4)
    split = y.copy()
    first = np.flatnonzero(y == 0)
    split[first[: len(first) // 2]] = 1
    result, start, pred, lines = _semi_rounds(cache, cut, [y, split], monkeypatch)
    assert result.rounds == 1 and result.history.shape == (150, 3)
    assert cluster_accuracy(y, pred) > 0.97
    assert len(lines) == 2 and "round 2 undone" in lines[1]


def test_a_round_that_fills_more_clusters_is_kept(monkeypatch):
    # One cluster agrees with every neighbour; splitting it can only lower the agreement
    # (here a lot: the round learns the cross-cut clusters).
    cache, y = make_cache(seed=5)
    cut = _cross_cut_labels(cache, 4)
    result, start, pred, lines = _semi_rounds(cache, np.zeros(len(y), int), cut, monkeypatch,
                                              rounds=1)
    assert result.rounds == 1 and len(np.unique(pred)) == 4
    assert all("undone" not in line for line in lines)


def test_the_agreement_check_can_be_turned_off(monkeypatch):
    cache, y = make_cache(seed=5)
    cut = _cross_cut_labels(cache, 4)
    result, start, pred, _ = _semi_rounds(cache, y, cut, monkeypatch, check_agreement=False)
    assert result.rounds == 2 and len(np.unique(pred)) == 4
    assert cluster_accuracy(y, pred) < 0.8  # the cut clusters were kept


def _tiny_images(n=24, size=12, seed=0):
    """Two kinds of images: bright left half or bright right half, with noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, 3, size, size))
    labels = np.arange(n) % 2
    for i, c in enumerate(labels):
        x[i, :, :, (0 if c == 0 else size // 2):(size // 2 if c == 0 else size)] += 180
    return torch.from_numpy(x.clip(0, 255).astype(np.uint8)), labels


def test_finetune_runs_a_few_steps_on_tiny_images():
    images, labels = _tiny_images()
    extractor = build_backbone(torch.nn.Conv2d(3, 8, 3, padding=1), None, (12, 12), seed=0)
    head = MultiHeadClassifier(1, extractor.feature_dim, 8, 2,
                               generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy((extractor.module.state_dict(), head.state_dict()))
    history = finetune(
        extractor, head, images, labels, np.ones(len(labels), bool), n_steps=4, batch_size=4,
        mu=2, threshold=0.5, learning_rate=0.03, ema_decay=0.5, flip=True, seed=0, device=CPU,
    )
    assert history.shape == (4, 3) and np.isfinite(history).all()
    changed = [not torch.equal(v, before[0][k]) for k, v in extractor.module.state_dict().items()]
    assert any(changed)  # the backbone was trained (end to end)
    assert any(not torch.equal(v, before[1][k]) for k, v in head.state_dict().items())
    assert not extractor.module.training and not head.training
    assert not any(p.requires_grad for p in extractor.module.parameters())


def test_finetune_is_deterministic_on_cpu():
    images, labels = _tiny_images(seed=1)
    results, conv = [], torch.nn.Conv2d(3, 8, 3, padding=1)
    for _ in range(2):
        extractor = build_backbone(conv, None, (12, 12), seed=0)  # a fresh copy each time
        head = MultiHeadClassifier(1, extractor.feature_dim, 8, 2,
                                   generator=torch.Generator().manual_seed(0))
        finetune(extractor, head, images, labels, np.ones(len(labels), bool), n_steps=3,
                 batch_size=4, mu=2, threshold=0.5, learning_rate=0.03, ema_decay=0.9,
                 flip=False, seed=5, device=CPU)
        results.append(list(extractor.module.state_dict().values()) + list(head.state_dict().values()))
    for p, q in zip(*results):
        assert torch.equal(p, q)


def test_reliable_samples_are_drawn_class_balanced():
    # 90 reliable samples of cluster 0, 10 of cluster 1, 5 of cluster 2; some unreliable.
    labels = np.repeat([0, 1, 2, 0], [90, 10, 5, 20])
    reliable = np.arange(len(labels)) < 105
    sampler = spice_semi._BalancedSampler(spice_semi._check_reliable(reliable), labels)
    drawn = sampler(30_000, torch.Generator().manual_seed(0)).numpy()
    assert reliable[drawn].all()
    share = np.bincount(labels[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(share, 1 / 3, atol=0.02)  # uniform over clusters, not samples
    for cluster, size in ((0, 90), (1, 10), (2, 5)):  # uniform within a cluster
        counts = np.bincount(drawn[labels[drawn] == cluster], minlength=105)
        members = np.flatnonzero((labels == cluster) & reliable)
        assert set(np.flatnonzero(counts)) == set(members)
        np.testing.assert_allclose(counts[members] / counts.sum(), 1 / size, rtol=0.35)


def test_semi_auto_finetunes_a_pretrained_backbone_in_the_time_left_to_it():
    params = SpiceClustering(10).get_params()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def plan(**kwargs):
        fields = {"backbone": "spice_convnet4", "input_size": (16, 16), "colour": False,
                  "pretrain_epochs": 20, "batch_size": 64, "learning_rate": 1e-3,
                  "temperature": 0.5, **kwargs}
        return Stage1Plan(**fields)

    def semi(plan=None, device=cpu, **given):
        s = resolve_settings({**params, **given}, device, 5000, plan=plan).semi
        return s.mode, s.steps, s.rounds, s.mu

    budgeted = plan(time_budget=300.0, views_per_second=1e3, finetune_steps=321)
    assert semi(budgeted) == ("finetune", 321, 1, 3)
    too_small = plan(time_budget=60.0, views_per_second=1e3)  # no steps were left to it
    assert semi(too_small) == ("head", 1000, 2, 7)
    assert semi(plan(), cuda) == ("finetune", 1000, 1, 7)  # no budget: the full steps
    assert semi(plan()) == ("head", 1000, 2, 7)  # no budget on a CPU: no time was left to it
    assert semi(plan(), semi="finetune") == ("finetune", 1000, 1, 3)
    assert semi(plan(pretrain_epochs=0))[0] == "head"  # given weights: nothing pretrained
    assert semi(None)[0] == "head"  # precomputed features (and before stage 1)
    assert semi(too_small, semi="finetune") == ("finetune", MIN_FINETUNE_STEPS, 1, 3)
    assert semi(budgeted, semi="head") == ("head", 1000, 2, 7)
    assert semi(budgeted, semi_steps=50, semi_rounds=3, semi_mu=5) == ("finetune", 50, 3, 5)
    assert resolve_settings({**params, "semi": None}, cpu, 5000, plan=budgeted).semi is None


def test_cached_strong_views_follow_what_learns_from_them():
    params = SpiceClustering(10).get_params()
    plan = Stage1Plan(backbone="spice_convnet4", input_size=(16, 16), colour=False,
                      pretrain_epochs=20, batch_size=64, learning_rate=1e-3, temperature=0.5,
                      time_budget=300.0, views_per_second=1e3, finetune_steps=321)

    def views(n=1000, plan=None, **given):
        v = resolve_settings({**params, **given}, torch.device("cpu"), n, plan=plan).views
        return v.n_weak, v.n_strong

    assert views() == (4, 16) and views(6000) == (2, 4)  # SPICE-Semi "head" learns from them
    assert views(plan=plan) == (4, 1) and views(6000, plan=plan) == (2, 1)  # "finetune"
    assert views(semi=None) == (4, 1) == views(semi="finetune")
    assert views(semi=None, head_objective="spice") == (4, 16)  # the "spice" heads do too
    assert views(plan=plan, n_strong_views=5) == (4, 5)
