"""Tests of spice_learn.representation: the stage-1 plan for the data and the device."""

import numpy as np
import pytest
import torch

from spice_learn import SpiceClustering, representation
from spice_learn.representation import (
    COLOUR_INPUT_SIZE,
    GRAY_BUDGET_CAP,
    GRAY_INPUT_SIZE,
    MIN_BUDGET_EPOCHS,
    MIN_FINETUNE_STEPS,
    MIN_PRETRAIN_STEPS,
    SEMI_BUDGET_SHARE,
    cpu_pretrain_budget,
    default_pretrain_epochs,
    default_simclr_settings,
    estimate_seconds,
    is_colour,
    plan_representation,
    resolve_backbone,
)
from spice_learn.settings import stage1_settings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def gray_images(n=40, size=28):
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8)
    return x.expand(n, 3, size, size).contiguous()


def colour_images(n=40, size=32):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)


def test_is_colour_reads_the_channels():
    assert not is_colour(gray_images())
    assert is_colour(colour_images())
    nearly_gray = gray_images().to(torch.int16)
    nearly_gray[:, 0] = (nearly_gray[:, 0] + 1).clamp(max=255)  # JPEG-like noise of one level
    assert not is_colour(nearly_gray.to(torch.uint8))


def test_auto_backbone_is_the_small_net_on_the_cpu_at_any_size():
    for size in ((8, 8), (32, 32), (64, 64), (224, 224)):
        assert resolve_backbone("auto", size, CPU) == "spice_convnet4"
    assert resolve_backbone("auto", (32, 32), CUDA) == "resnet18"
    assert resolve_backbone("auto", (28, 28), CUDA) == "spice_convnet4"
    assert resolve_backbone("resnet34", (8, 8), CPU) == "resnet34"  # explicit wins


def test_pretrain_epochs_follow_the_data_size_on_the_cpu():
    assert default_pretrain_epochs(1797, CPU) == 60
    assert default_pretrain_epochs(10_000, CPU) == 60
    assert default_pretrain_epochs(20_000, CPU) == 60
    assert default_pretrain_epochs(70_000, CPU) == 32
    assert default_pretrain_epochs(400_000, CPU) == 15
    assert default_pretrain_epochs(200, CPU) == 60
    epochs = [default_pretrain_epochs(n, CPU) for n in (1000, 5000, 20_000, 100_000)]
    assert epochs == sorted(epochs, reverse=True)
    assert default_pretrain_epochs(70_000, CUDA) == 100  # GPU defaults stay


def test_small_sets_get_a_floor_of_pretraining_steps():
    assert default_pretrain_epochs(200, CPU) == 60  # no batch given: the rule alone
    assert default_pretrain_epochs(200, CPU, batch_size=64) == 200  # 3 steps an epoch
    assert default_pretrain_epochs(30, CPU, batch_size=64) == MIN_PRETRAIN_STEPS  # 1 a step
    assert default_pretrain_epochs(1_797, CPU, batch_size=64) == 60  # enough steps already
    assert default_pretrain_epochs(200, CPU, colour=True, batch_size=64) == 200
    assert default_pretrain_epochs(1_000, CUDA, batch_size=256) == 200
    plan = plan_representation("auto", gray_images(n=200, size=8), pretrain=True,
                               pretrain_epochs=None, device=CPU)
    assert plan.pretrain_epochs == 200  # with the plan's batch of 64
    explicit = plan_representation("auto", gray_images(n=200, size=8), pretrain=True,
                                   pretrain_epochs=None, device=CPU, batch_size=100)
    assert explicit.pretrain_epochs == 300


def test_colour_images_get_more_pretrain_epochs_on_the_cpu():
    assert default_pretrain_epochs(2_000, CPU, colour=True) == 150
    assert default_pretrain_epochs(10_000, CPU, colour=True) == 100
    assert default_pretrain_epochs(70_000, CPU, colour=True) == 40
    for n in (200, 2_000, 10_000, 70_000):
        assert default_pretrain_epochs(n, CPU, colour=True) > default_pretrain_epochs(n, CPU)
    assert default_pretrain_epochs(10_000, CUDA, colour=True) == 100


def test_simclr_batch_is_small_on_the_cpu_only():
    assert default_simclr_settings(False, CPU)["batch_size"] == 64
    assert default_simclr_settings(False)["batch_size"] == 64  # no device: a CPU
    assert default_simclr_settings(False, CUDA)["batch_size"] == 256  # GPU defaults stay
    cpu, gpu = default_simclr_settings(True, CPU), default_simclr_settings(True, CUDA)
    assert (cpu["batch_size"], cpu["learning_rate"]) == (64, 2e-3)
    assert default_simclr_settings(True) == cpu
    assert (gpu["batch_size"], gpu["learning_rate"]) == (128, 4e-3)
    assert cpu["temperature"] == gpu["temperature"] == 0.2


def test_plan_resolves_size_colour_and_settings():
    gray = plan_representation("auto", gray_images(size=28), pretrain=True,
                               pretrain_epochs=None, device=CPU)
    assert gray.backbone == "spice_convnet4" and not gray.colour
    assert gray.input_size == (GRAY_INPUT_SIZE, GRAY_INPUT_SIZE)
    assert (gray.batch_size, gray.learning_rate, gray.temperature) == (64, 1e-3, 0.5)
    colour = plan_representation("auto", colour_images(size=64), pretrain=True,
                                 pretrain_epochs=None, device=CPU)
    assert colour.colour and colour.input_size == (COLOUR_INPUT_SIZE, COLOUR_INPUT_SIZE)
    assert COLOUR_INPUT_SIZE > GRAY_INPUT_SIZE  # photos are seen with more detail
    tiny = plan_representation("auto", colour_images(size=8), pretrain=True,
                               pretrain_epochs=None, device=CPU)
    assert tiny.input_size == (GRAY_INPUT_SIZE, GRAY_INPUT_SIZE)  # never below 16 px
    middle = plan_representation("auto", colour_images(size=20), pretrain=True,
                                 pretrain_epochs=None, device=CPU)
    assert middle.input_size == (20, 20)  # their own side in between
    wide = plan_representation("auto", torch.randint(0, 256, (40, 3, 12, 20), dtype=torch.uint8),
                               pretrain=True, pretrain_epochs=None, device=CPU)
    assert wide.input_size == (20, 20)  # the larger side decides
    assert (colour.batch_size, colour.learning_rate, colour.temperature) == (
        tuple(default_simclr_settings(True).values()))
    many_gray, many_colour = (plan_representation("auto", images(n=1000), pretrain=True,
                                                   pretrain_epochs=None, device=CPU)
                              for images in (gray_images, colour_images))
    assert many_colour.pretrain_epochs > many_gray.pretrain_epochs  # the plan passes it on
    explicit = plan_representation("auto", colour_images(), pretrain=True, pretrain_epochs=7,
                                   device=CPU, batch_size=32, temperature=0.1)
    assert explicit.pretrain_epochs == 7 and explicit.batch_size == 32
    assert explicit.temperature == 0.1 and explicit.learning_rate == 2e-3
    none = plan_representation("auto", gray_images(), pretrain=False, pretrain_epochs=None,
                               device=CPU)
    assert none.pretrain_epochs == 0


def test_cpu_budget_grows_with_the_data_and_colour():
    digits, mnist = cpu_pretrain_budget(1_800, False), cpu_pretrain_budget(70_000, False)
    assert digits == pytest.approx(60.0) and mnist == GRAY_BUDGET_CAP == 25 * 60
    assert 7 * 60 < cpu_pretrain_budget(9_298, False) < 7.5 * 60  # USPS
    assert cpu_pretrain_budget(1_800, True) == pytest.approx(3.5 * digits)
    assert 14 * 60 < cpu_pretrain_budget(10_000, True) < 16 * 60
    assert cpu_pretrain_budget(50, False) == cpu_pretrain_budget(500, False) == 30.0  # floor
    sizes = range(100, 100_000, 100)
    for colour in (False, True):
        budgets = [cpu_pretrain_budget(n, colour) for n in sizes]
        assert all(a <= b for a, b in zip(budgets, budgets[1:]))  # no step down
    # Up to MNIST's size never below the earlier 60 * (N / 1,800) ** 0.85, so machines
    # on which the rule's epochs fitted that budget keep them.
    assert all(cpu_pretrain_budget(n, False) >= 60 * (n / 1_800) ** 0.85 - 1e-9
               for n in range(100, 70_001, 100))


class _FakeSpeed:
    """Stands in for ``simclr_speed``: records its calls, returns ``speed``."""

    def __init__(self, speed):
        self.speed, self.calls = speed, []

    def __call__(self, extractor, images, *, batch_size, augment, device, **_):
        self.calls.append((tuple(extractor.input_size), batch_size, images.shape[0]))
        return self.speed


def test_auto_time_fits_the_epochs_to_the_measured_speed(monkeypatch):
    images, n = gray_images(n=900), 900
    budget = cpu_pretrain_budget(n, False)
    default = default_pretrain_epochs(n, CPU)

    def plan(speed, **kwargs):
        fake = _FakeSpeed(speed)
        monkeypatch.setattr(representation, "simclr_speed", fake)
        args = {"pretrain": True, "pretrain_epochs": None, "device": CPU,
                "pretrain_time": "auto", **kwargs}
        return plan_representation("auto", images, **args), fake.calls

    slow, calls = plan(2 * n * 12.5 / budget)  # 12.5 epochs fit the budget
    assert slow.pretrain_epochs == 12 < default
    assert slow.time_budget == pytest.approx(budget)
    assert slow.views_per_second == pytest.approx(2 * n * 12.5 / budget)
    assert calls == [((GRAY_INPUT_SIZE, GRAY_INPUT_SIZE), 64, n)]  # the plan's net and batch
    fast, _ = plan(1e9)
    assert fast.pretrain_epochs == default  # the budget never adds epochs
    crawl, _ = plan(1.0)
    assert crawl.pretrain_epochs == MIN_BUDGET_EPOCHS
    near, _ = plan(2 * n * 0.9 * default / budget)  # 90 % of the rule's epochs fit
    assert near.pretrain_epochs == default and near.time_budget == pytest.approx(budget)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    fake = _FakeSpeed(1.0)
    monkeypatch.setattr(representation, "simclr_speed", fake)
    own = plan_representation(module, images, pretrain=True, pretrain_epochs=None, device=CPU,
                              pretrain_time="auto")  # a user's module is not timed
    assert fake.calls == [] and own.time_budget is None and own.pretrain_epochs == default
    # explicit epochs, no budget or a given one, no pretraining, CUDA: nothing is timed
    for kwargs in ({"pretrain_epochs": 40}, {"pretrain_time": None}, {"pretrain_time": 60.0},
                   {"pretrain": False}, {"device": CUDA}):
        other, calls = plan(1.0, **kwargs)
        assert calls == [] and other.time_budget is None and other.views_per_second is None
    assert plan(1.0, pretrain_epochs=40)[0].pretrain_epochs == 40


def test_cpu_budget_leaves_finetune_a_share_only_when_it_buys_enough_steps(monkeypatch):
    images, n, step = gray_images(n=900), 900, 40  # slow enough to cut the epochs
    budget = cpu_pretrain_budget(n, False)

    def plan(speed, **kwargs):
        monkeypatch.setattr(representation, "simclr_speed", _FakeSpeed(speed))
        args = {"pretrain": True, "pretrain_epochs": None, "device": CPU,
                "pretrain_time": "auto", **kwargs}
        return plan_representation("auto", images, **args)

    speed = 2 * MIN_FINETUNE_STEPS * step / (SEMI_BUDGET_SHARE * budget)  # twice the fewest
    shared = plan(speed, finetune_step_views=step)
    assert shared.finetune_steps == 2 * MIN_FINETUNE_STEPS
    assert shared.time_budget == pytest.approx((1 - SEMI_BUDGET_SHARE) * budget)
    alone = plan(speed)  # SPICE-Semi will not finetune: stage 1 keeps the whole budget
    assert alone.finetune_steps is None and alone.time_budget == pytest.approx(budget)
    assert shared.pretrain_epochs < alone.pretrain_epochs
    short = plan(0.9 * speed / 2, finetune_step_views=step)  # 180 steps would fit
    assert short.finetune_steps is None and short.time_budget == pytest.approx(budget)
    # no budget: nothing is reserved
    assert plan(speed, finetune_step_views=step, pretrain_time=None).finetune_steps is None


def test_cpu_budget_leaves_colour_images_no_finetune_share_unless_asked(monkeypatch):
    images, step = colour_images(n=900), 40
    budget = cpu_pretrain_budget(900, True)
    speed = 2 * MIN_FINETUNE_STEPS * step / (SEMI_BUDGET_SHARE * budget)
    monkeypatch.setattr(representation, "simclr_speed", _FakeSpeed(speed))
    args = {"pretrain": True, "pretrain_epochs": None, "device": CPU, "pretrain_time": "auto",
            "finetune_step_views": step}
    auto = plan_representation("auto", images, finetune_colour=False, **args)  # semi="auto"
    assert auto.colour and auto.finetune_steps is None
    assert auto.time_budget == pytest.approx(budget)
    asked = plan_representation("auto", images, finetune_colour=True, **args)  # "finetune"
    assert asked.finetune_steps == 2 * MIN_FINETUNE_STEPS
    assert asked.time_budget == pytest.approx((1 - SEMI_BUDGET_SHARE) * budget)
    # grayscale images keep their share under semi="auto"
    gray_budget = cpu_pretrain_budget(900, False)
    monkeypatch.setattr(representation, "simclr_speed", _FakeSpeed(speed * budget / gray_budget))
    gray = plan_representation("auto", gray_images(n=900), finetune_colour=False, **args)
    assert gray.finetune_steps == 2 * MIN_FINETUNE_STEPS
    # the estimator asks for the colour share with an explicit semi="finetune" only
    for semi, wanted in (("auto", False), ("finetune", True), ("head", False)):
        params = SpiceClustering(2, semi=semi).get_params()
        assert stage1_settings(params).finetune_colour is wanted


def test_estimate_follows_the_measured_speed(monkeypatch):
    monkeypatch.setattr(representation, "simclr_speed", _FakeSpeed(100.0))
    measured = plan_representation("auto", gray_images(n=900), pretrain=True,
                                   pretrain_epochs=None, device=CPU, pretrain_time="auto")
    half = plan_representation("auto", gray_images(n=900), pretrain=True,
                               pretrain_epochs=measured.pretrain_epochs, device=CPU)
    # 100 views/s is far slower than the development machine's constants
    assert estimate_seconds(measured, 900, 7) > 5 * estimate_seconds(half, 900, 7)
    train = 2 * 900 * measured.pretrain_epochs / 100.0
    assert estimate_seconds(measured, 900, 0) == pytest.approx(train)


def test_estimate_grows_with_images_epochs_and_pixels():
    plan = plan_representation("auto", gray_images(), pretrain=True, pretrain_epochs=10,
                               device=CPU)
    one = estimate_seconds(plan, 1000, 7)
    assert one > 0
    assert estimate_seconds(plan, 2000, 7) == pytest.approx(2 * one)
    resnet = plan_representation("resnet18", colour_images(), pretrain=True,
                                 pretrain_epochs=10, device=CPU)
    assert estimate_seconds(resnet, 1000, 7) is None  # no cost model
    small = plan_representation("auto", colour_images(size=16), pretrain=True,
                                pretrain_epochs=10, device=CPU)
    large = plan_representation("auto", colour_images(size=32), pretrain=True,
                                pretrain_epochs=10, device=CPU)
    ratio = estimate_seconds(large, 1000, 7) / estimate_seconds(small, 1000, 7)
    assert 1.5 < ratio < (24 / 16) ** 2  # more pixels cost more, but less than their count


def test_fit_exposes_and_prints_the_plan(capsys):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 20, 20, 3), dtype=np.uint8)
    model = SpiceClustering(2, pretrain_epochs=1, n_heads=2, semi=None, random_state=0,
                            verbose=1).fit(X)
    err = capsys.readouterr().err
    assert "plan: spice_convnet4 at 20x20 px (colour images), 1 SimCLR epochs" in err
    assert err.index("plan:") < err.index("pretraining (SimCLR)")  # before the long work
    plan = model.plan_
    assert plan["colour"] is True and plan["input_size"] == (20, 20)
    assert plan["pretrain_epochs"] == 1 == len(model.pretrain_history_)
    assert plan["temperature"] == 0.2 and plan["head_objective"] == "scan"
    assert plan["estimated_seconds"] > 0
    assert plan["pretrain_budget"] is None and plan["pretrain_views_per_second"] is None
    gray = np.repeat(X[..., :1], 3, axis=3)
    model = SpiceClustering(2, pretrain_epochs=1, n_heads=2, semi=None, temperature=0.3,
                            random_state=0).fit(gray)
    assert model.plan_["colour"] is False and model.plan_["temperature"] == 0.3
    assert model.plan_["pretrain_batch_size"] == 64


def test_fit_runs_the_epochs_its_budget_allows(monkeypatch):
    # The CPU's rule (device="cpu": on CUDA the plan has no budget).
    X = np.random.default_rng(0).integers(0, 256, (40, 12, 12), dtype=np.uint8)
    budget = cpu_pretrain_budget(40, False)
    monkeypatch.setattr(representation, "simclr_speed", _FakeSpeed(2 * 40 * 7.5 / budget))
    model = SpiceClustering(2, n_heads=2, semi=None, device="cpu", random_state=0).fit(X)
    assert model.plan_["pretrain_epochs"] == 7 == len(model.pretrain_history_)
    assert model.plan_["pretrain_budget"] == pytest.approx(budget)
    assert model.plan_["pretrain_views_per_second"] == pytest.approx(2 * 40 * 7.5 / budget)
    monkeypatch.setattr(representation, "MIN_PRETRAIN_STEPS", 60)  # keep the test short
    untimed = SpiceClustering(2, n_heads=2, semi=None, pretrain_time=None, device="cpu",
                              random_state=0)
    untimed.fit(X)
    assert untimed.plan_["pretrain_epochs"] == default_pretrain_epochs(40, CPU, batch_size=64)
    assert untimed.plan_["pretrain_budget"] is None


def _estimate(plan, speed, n_views, finetune_views=0):
    """The estimate of a 40-image fit's ``plan_`` at ``speed``: its cached views per
    image (the original one included) and the images its finetune trains on."""
    embed = speed * representation.EMBED_IMAGES_PER_SECOND_16PX / (
        representation.TRAIN_VIEWS_PER_SECOND_16PX)
    return (2 * 40 * plan["pretrain_epochs"] + finetune_views) / speed + 40 * n_views / embed


def test_default_fit_finetunes_in_the_time_its_budget_leaves(monkeypatch):
    X = np.random.default_rng(0).integers(0, 256, (40, 12, 12), dtype=np.uint8)
    budget, step = cpu_pretrain_budget(40, False), 4 * (1 + 2 * 3)  # B = 4, mu "auto" = 3
    speed = (MIN_FINETUNE_STEPS + 10) * step / (SEMI_BUDGET_SHARE * budget)
    monkeypatch.setattr(representation, "simclr_speed", _FakeSpeed(speed))
    quick = {"n_heads": 2, "max_epochs": 3, "n_weak_views": 1,  # strong views: "auto"
             "semi_batch_size": 4, "n_neighbors": 3, "device": "cpu", "random_state": 0}
    monkeypatch.setattr(representation, "default_pretrain_epochs", lambda *args, **kwargs: 2)
    model = SpiceClustering(2, reliability_threshold=0.3, **quick).fit(X)
    plan = model.plan_
    assert plan["finetune_steps"] == MIN_FINETUNE_STEPS + 10
    assert (plan["semi"], plan["semi_steps"], plan["semi_rounds"], plan["semi_mu"]) == (
        "finetune", MIN_FINETUNE_STEPS + 10, 1, 3)
    assert plan["pretrain_budget"] == pytest.approx((1 - SEMI_BUDGET_SHARE) * budget)
    assert model.semi_history_.shape == (MIN_FINETUNE_STEPS + 10, 3)
    # the estimate follows the plan: the one strong view finetuning caches, and the steps
    assert plan["n_strong_views"] == 1
    assert plan["estimated_seconds"] == pytest.approx(
        _estimate(plan, speed, 1 + 1 + 1, (MIN_FINETUNE_STEPS + 10) * step))
    monkeypatch.setattr(representation, "simclr_speed", _FakeSpeed(speed / 2))
    small = SpiceClustering(2, semi_steps=3, **quick).fit(X)
    assert small.plan_["finetune_steps"] is None and small.plan_["semi"] == "head"
    assert small.plan_["pretrain_budget"] == pytest.approx(budget)
    assert small.plan_["estimated_seconds"] == pytest.approx(  # 16 strong views for the head
        _estimate(small.plan_, speed / 2, 1 + 1 + 16))


def test_checkpointed_fits_keep_the_rule_so_reruns_resume(monkeypatch, tmp_path):
    X = np.random.default_rng(0).integers(0, 256, (40, 12, 12), dtype=np.uint8)
    fake = _FakeSpeed(1.0)  # would cut to the fewest epochs
    monkeypatch.setattr(representation, "simclr_speed", fake)
    monkeypatch.setattr(representation, "MIN_PRETRAIN_STEPS", 60)  # keep the test short
    model = SpiceClustering(2, n_heads=2, semi=None, checkpoint_dir=tmp_path, device="cpu",
                            random_state=0).fit(X)
    assert fake.calls == [] and model.plan_["pretrain_budget"] is None
    assert model.plan_["pretrain_epochs"] == default_pretrain_epochs(40, CPU, batch_size=64)
