"""Regulariser weight schedules."""

import pytest

from finetune.regularisers.landmark import LandmarkConfig
from finetune.schedules import WeightSchedule
from lafs.errors import ConfigError


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
