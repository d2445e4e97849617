"""Schedules: DINO's cosine schedule and teacher temperature (docs/losses.md section 5), regulariser weights."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from finetune.regularisers import RegularisersConfig
from finetune.regularisers.landmark import LandmarkConfig
from finetune.task import FinetuneConfig
from lafs.config import load_config
from lafs.engine import OptimConfig
from lafs.errors import ConfigError
from lafs.schedules import (
    WeightSchedule,
    cosine_schedule,
    teacher_temperature,
    teacher_temperature_per_epoch,
    warmup_cosine,
)

# ------------------------------------------------------------------------------------------------------ schedules


def dino_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0.0):
    """DINO's utils.cosine_scheduler (facebookresearch/dino), reimplemented: the whole per-step array."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


@pytest.mark.parametrize(
    ("start", "end", "epochs", "per_epoch", "warmup_epochs", "warmup_start"),
    [
        (0.996, 1.0, 41, 7, 0, 0.0),  # LAFS teacher momentum
        (5e-4 * 82 / 256, 1e-6, 41, 5, 10, 0.0),  # LAFS learning rate with 10 warm-up epochs
        (0.04, 0.4, 6, 3, 0, 0.0),  # weight decay, rising
        (1.0, 0.1, 5, 1, 1, 0.3),  # a one-step warm-up (np.linspace with one point)
        (2.0, 0.5, 4, 3, 2, 0.7),
    ],
)
def test_cosine_schedule_matches_dino_cosine_scheduler(start, end, epochs, per_epoch, warmup_epochs, warmup_start):
    reference = dino_cosine_scheduler(start, end, epochs, per_epoch, warmup_epochs, warmup_start)
    total, warmup = epochs * per_epoch, warmup_epochs * per_epoch
    ours = np.array([cosine_schedule(s, total, start, end, warmup, warmup_start) for s in range(total)])
    np.testing.assert_allclose(ours, reference, rtol=1e-14, atol=0)
    assert ours[0] == pytest.approx(warmup_start if warmup else start, rel=1e-14)
    assert ours[-1] == pytest.approx(end, abs=abs(start - end) * math.pi**2 / (4 * (total - warmup) ** 2) * 1.01)
    assert cosine_schedule(total, total, start, end, warmup, warmup_start) == end  # held after the last step
    assert cosine_schedule(10 * total, total, start, end, warmup, warmup_start) == end


def test_cosine_schedule_warmup_reaches_start():
    assert cosine_schedule(9, 100, 1.0, 0.0, warmup_steps=10) == 1.0
    assert cosine_schedule(10, 100, 1.0, 0.0, warmup_steps=10) == 1.0
    assert cosine_schedule(0, 100, 1.0, 0.0, warmup_steps=10, warmup_start=0.25) == 0.25
    with pytest.raises(ValueError):
        cosine_schedule(-1, 100, 1.0, 0.0)
    with pytest.raises(ValueError):
        cosine_schedule(0, 10, 1.0, 0.0, warmup_steps=11)


def test_warmup_cosine_scales_stretches_and_rounds_like_each_recipe():
    # LAFS pretraining: 5e-4 at 256 images, linear; 82 images per step -> 5e-4 * 82 / 256 = 1.6015625e-4 exactly as
    # DINO computes it (the same operations, so the same float)
    pretrain = warmup_cosine(5e-4, 1e-6, 10, 5, 205, scaling="linear", total_batch=82, reference_batch=256)
    assert pretrain.peak == 5e-4 * 82 / 256 and pretrain.warmup_steps == 50
    expected = dino_cosine_scheduler(5e-4 * 82 / 256, 1e-6, 41, 5, 10)
    assert [pretrain(step) for step in range(205)] == pytest.approx(expected.tolist(), rel=1e-12, abs=1e-15)
    # LAFS fine-tuning: sqrt(400 / 1200) = 0.57735; 5 of 34 epochs stretched to 17 -> 2.5 epochs of 3 steps = 7.5 -> 8
    finetune = warmup_cosine(2.29e-3, 1e-6, 5, 3, 51, 17 / 34, "sqrt", 400, 1200)
    assert finetune.peak == pytest.approx(2.29e-3 * 0.5773502691896258) and finetune.warmup_steps == 8
    assert finetune(0) == 0.0 and finetune(8) == finetune.peak and finetune(51) == 1e-6
    # linear fine-tuning scaling as it always was, lr * (batch / reference): bit for bit, not only approximately
    assert warmup_cosine(2.29e-3, 0.0, 0, 1, 1, 1.0, "linear", 96, 1200).peak == 2.29e-3 * (96 / 1200)
    plain = warmup_cosine(1e-3, 0.0, 1, 4, 8)  # the landmark predictor: no scaling, no stretch
    assert plain.peak == 1e-3 and plain.warmup_steps == 4 and plain(6) == pytest.approx(0.5e-3)


def test_teacher_temperature_warms_down_from_007_to_004():
    warmup = 30 * 100
    assert teacher_temperature(0, warmup) == 0.07
    assert teacher_temperature(warmup // 2, warmup) == pytest.approx(0.055, abs=1e-15)
    assert teacher_temperature(warmup, warmup) == 0.04
    assert teacher_temperature(10 * warmup, warmup) == 0.04
    temps = [teacher_temperature(s, warmup) for s in range(warmup + 1)]
    assert all(a > b for a, b in itertools.pairwise(temps))
    assert teacher_temperature(0, 0) == 0.04


def test_teacher_temperature_per_epoch_is_the_released_linspace_table():
    """np.linspace(0.07, 0.04, 30)[epoch]: 0.07 - 0.03 * epoch / 29, so 0.068966 at epoch 1, 0.04 at epoch 29 (one
    epoch before the per-step ramp) and after."""
    assert teacher_temperature_per_epoch(0, 30) == 0.07
    assert teacher_temperature_per_epoch(1, 30) == pytest.approx(0.0689655172, abs=1e-10)
    assert teacher_temperature_per_epoch(29, 30) == pytest.approx(0.04, abs=1e-15)
    assert teacher_temperature_per_epoch(40, 30) == 0.04
    assert teacher_temperature_per_epoch(0, 1) == 0.07 and teacher_temperature_per_epoch(0, 0) == 0.04


# ------------------------------------------------------------------------------------------- regulariser weights


def test_lafs_landmark_schedule_hand_values():
    schedule = LandmarkConfig().weight
    expected = {0: 1000, 7: 1000, 7.99: 1000, 8: 100, 13: 100, 14: 1, 20: 1, 21: 0.11, 27: 0.11, 28: 0, 40: 0}
    for epoch, value in expected.items():
        assert schedule(epoch) == pytest.approx(value)


def test_constant_start_at_and_warmup():
    assert WeightSchedule(value=0.3)(123.0) == 0.3
    start = WeightSchedule(kind="start_at", value=0.05, start_epoch=7)
    assert (start(6.99), start(7), start(30)) == (0.0, 0.05, 0.05)
    warm = WeightSchedule(kind="warmup", value=2.0, start_epoch=1, warmup_epochs=4)
    assert (warm(0.5), warm(1), warm(3), warm(5), warm(9)) == (0.0, 0.0, 1.0, 2.0, 2.0)
    assert WeightSchedule(kind="warmup", value=2.0, start_epoch=1)(1) == 2.0


@pytest.mark.parametrize(
    "schedule",
    [
        WeightSchedule(kind="piecewise", boundaries=[1, 2], values=[1.0]),
        WeightSchedule(kind="piecewise", boundaries=[3, 2], values=[1.0, 2.0, 3.0]),
        WeightSchedule(value=-1.0),
        WeightSchedule(kind="warmup", warmup_epochs=-1),
    ],
)
def test_impossible_schedules_are_config_errors(schedule):
    with pytest.raises(ConfigError):
        schedule.validate()


# ------------------------------------------------------------------------------------- schedules of a short run


def test_landmark_boundaries_stretched_to_a_17_epoch_run():
    """LAFS's 8/14/21/28 of 34 epochs in a 17-epoch run under optim.schedules=relative: 4/7/10.5/14."""
    weight = LandmarkConfig().in_run(OptimConfig(epochs=17, schedules="relative")).weight
    assert weight.boundaries == [4.0, 7.0, 10.5, 14.0] and weight.unit == "epochs"
    expected = {0: 1000, 3.99: 1000, 4: 100, 6.99: 100, 7: 1, 10.49: 1, 10.5: 0.11, 13.99: 0.11, 14: 0, 17: 0}
    assert {epoch: weight(epoch) for epoch in expected} == pytest.approx(expected)


def test_epochs_mode_keeps_every_schedule_as_written():
    """The default (optim.schedules=epochs) reads every key as written, whatever the run's length."""
    for name, options in vars(RegularisersConfig()).items():
        resolved = options.in_run(OptimConfig(epochs=3))
        assert resolved.weight == options.weight, name
        assert all(resolved.weight(e) == options.weight(e) for e in np.arange(0, 40, 0.25)), name
    assert OptimConfig(epochs=3).stretch(34) == 1.0 and OptimConfig(epochs=17, schedules="relative").stretch(34) == 0.5


def test_fraction_unit_schedule():
    """A warm-up from 10 % of the run over 20 % of it: epochs 5 -> 15 of a 50-epoch run, whatever optim.schedules."""
    fraction = WeightSchedule(kind="warmup", value=2.0, start_epoch=0.1, warmup_epochs=0.2, unit="fraction")
    fraction.validate()
    for stretch in (1.0, 0.37):  # the stretch of optim.schedules=relative applies to epochs, not fractions
        weight = fraction.in_run(50, stretch)
        assert (weight.start_epoch, weight.warmup_epochs) == pytest.approx((5.0, 10.0))
        assert [weight(e) for e in (4.9, 5, 10, 15, 50)] == pytest.approx([0.0, 0.0, 1.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="in_run"):
        fraction(1.0)  # a fraction of which run? it must be converted first
    steps = WeightSchedule(kind="piecewise", boundaries=[0.25, 0.5], values=[0.0, 1.0, 0.5], unit="fraction")
    assert steps.in_run(200).boundaries == [50.0, 100.0] and steps.first_active() == 0.25
    with pytest.raises(ConfigError, match=r"^regularisers\.intraloss\.weight\.start_epoch is a fraction"):
        overrides = ["regularisers.intraloss.weight.unit=fraction", "regularisers.intraloss.weight.start_epoch=5"]
        load_config(FinetuneConfig, overrides=overrides)


def test_first_active():
    assert WeightSchedule(kind="start_at", value=0.05, start_epoch=7).first_active() == 7.0
    assert WeightSchedule(kind="warmup", value=1.0, start_epoch=2, warmup_epochs=3).first_active() == 2.0
    assert WeightSchedule(value=0.3).first_active() == 0.0
    assert WeightSchedule(value=0.0).first_active() == math.inf
    assert LandmarkConfig().weight.first_active() == 0.0
    late = WeightSchedule(kind="piecewise", boundaries=[4, 9], values=[0.0, 0.0, 1.0])
    assert late.first_active() == 9.0
    assert WeightSchedule(kind="piecewise", boundaries=[4], values=[0.0, 0.0]).first_active() == math.inf
